"""Ollama's wire conventions: errors, timestamps, durations and keep_alive, request options."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "BUSY_MESSAGE",
    "EMULATED_VERSION",
    "FOREVER_NS",
    "ApiError",
    "EmptyBody",
    "Options",
    "RunnerOptions",
    "StreamStartError",
    "default_options",
    "dumps",
    "go_quote",
    "go_type_name",
    "human_bytes",
    "json_type_name",
    "parse_env_keep_alive",
    "parse_go_duration",
    "parse_keep_alive",
    "resolve_options",
    "rfc3339",
]

EMULATED_VERSION = "0.33.0"
"""The Ollama release the emulator follows (and reports on ``/api/version``); where v0.24.0, the
oracle of the real-server suite, is older, the emulator answers as this release does."""
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
FOREVER_NS = 2**63 - 1
"""``time.Duration(math.MaxInt64)``: what Ollama stores for a negative keep_alive."""


class ApiError(Exception):
    """An error answered with a real status code, before any byte of the body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StreamStartError(ApiError):
    """An error from the runner as a stream starts: still a status code, but written by the stream's
    writer, whose ``Content-Type`` is ``application/json`` without a charset."""


class EmptyBody(ApiError):
    """Go's ``io.EOF`` from decoding an empty body; the native API words it differently from /v1."""

    def __init__(self) -> None:
        super().__init__(400, "missing request body")


# ----------------------------------------------------------------------------- times


def rfc3339(ns: int | None = None) -> str:
    """A UTC RFC 3339 timestamp with trailing-zero-trimmed nanoseconds, like Go's RFC3339Nano."""
    if ns is None:
        ns = time.time_ns()
    seconds, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) if seconds < 253402300800 else None
    if base is None:  # past year 9999: keep Go's shape without overflowing the C library
        base = "9999-12-31T23:59:59"
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def human_bytes(size: int) -> str:
    """Ollama's ``format.HumanBytes2`` (binary units, one decimal)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# ----------------------------------------------------------------------------- durations

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def go_quote(text: str) -> str:
    """Go's ``%q`` for the strings Ollama quotes in messages."""
    return json.dumps(text, ensure_ascii=False)


def parse_go_duration(text: str) -> float:
    """``time.ParseDuration`` in seconds, raising ``ValueError`` with Go's message."""
    orig, rest, sign = text, text, 1.0
    if rest[:1] in "+-" and rest:
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"time: invalid duration {go_quote(orig)}")
    total = 0.0
    while rest:
        match = _DURATION_PART.match(rest)
        number, unit = (match.group(1), match.group(2)) if match else ("", "")
        if number in ("", "."):
            raise ValueError(f"time: invalid duration {go_quote(orig)}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {go_quote(orig)}")
        if unit not in _UNITS:
            raise ValueError(f"time: unknown unit {go_quote(unit)} in duration {go_quote(orig)}")
        total += float(number) * _UNITS[unit]
        rest = rest[len(number) + len(unit) :]
    return sign * total


def parse_keep_alive(value: Any) -> float:
    """An ``api.Duration`` in seconds (``math.inf`` for "forever"); raises ``ApiError(400)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ApiError(400, f"Unsupported type: '{go_type_name(value)}'")
    if isinstance(value, str):
        try:
            seconds = parse_go_duration(value)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    else:
        seconds = float(value)
    return math.inf if seconds < 0 else seconds


def parse_env_keep_alive(text: str) -> float:
    """``OLLAMA_KEEP_ALIVE``: a duration string or integer seconds; negative means forever."""
    text = text.strip().strip("\"'")
    try:
        seconds = float(int(text))
    except ValueError:
        seconds = parse_go_duration(text)
    return math.inf if seconds < 0 else seconds


# ----------------------------------------------------------------------------- JSON kinds


def json_type_name(value: Any) -> str:
    """The JSON kind Go names in ``UnmarshalTypeError`` messages."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def go_type_name(value: Any) -> str:
    """``reflect.TypeOf`` of a decoded ``any``."""
    return {
        "bool": "bool",
        "number": "float64",
        "string": "string",
        "array": "[]interface {}",
        "object": "map[string]interface {}",
    }.get(json_type_name(value), "<nil>")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


# ----------------------------------------------------------------------------- options

_INT_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed", "num_predict", "top_k"}
    | {"repeat_last_n"}
)
_FLOAT_OPTIONS = frozenset(
    {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty"}
)


@dataclass(frozen=True)
class RunnerOptions:
    """The load-time options (``api.Runner``); a loaded model is reused only if they match."""

    num_ctx: int
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int = 0
    use_mmap: bool | None = None
    num_thread: int = 0

    def matches(self, requested: RunnerOptions) -> bool:
        """``needsReload`` in reverse: a requested ``num_gpu < 0`` ignores the GPU count."""
        mine, theirs = self, requested
        if requested.num_gpu < 0:
            return (mine.num_ctx, mine.num_batch, mine.main_gpu, mine.use_mmap, mine.num_thread) == (
                theirs.num_ctx,
                theirs.num_batch,
                theirs.main_gpu,
                theirs.use_mmap,
                theirs.num_thread,
            )
        return mine == theirs


@dataclass
class Options:
    """The merged options of one request (defaults, then Modelfile parameters, then ``options``)."""

    values: dict[str, Any] = field(default_factory=dict)

    def runner(self, context_length: int, vision: bool) -> RunnerOptions:
        num_ctx = max(int(self.values["num_ctx"]), 4)
        if vision:
            num_ctx = max(num_ctx, 2048)
        return RunnerOptions(
            num_ctx=min(num_ctx, context_length),
            num_batch=int(self.values["num_batch"]),
            num_gpu=int(self.values["num_gpu"]),
            main_gpu=int(self.values["main_gpu"]),
            use_mmap=self.values.get("use_mmap"),
            num_thread=int(self.values["num_thread"]),
        )

    @property
    def num_predict(self) -> int:
        return int(self.values["num_predict"])

    @property
    def stop(self) -> list[str]:
        return list(self.values.get("stop") or [])


def default_options(num_ctx: int) -> dict[str, Any]:
    """``api.DefaultOptions()``."""
    return {
        "num_predict": -1,
        "num_keep": 4,
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.9,
        "typical_p": 1.0,
        "repeat_last_n": 64,
        "repeat_penalty": 1.1,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": -1,
        "num_ctx": num_ctx,
        "num_batch": 512,
        "num_gpu": -1,
        "main_gpu": 0,
        "num_thread": 0,
        "use_mmap": None,
    }


def _apply(values: dict[str, Any], options: Iterable[tuple[str, Any]]) -> None:
    """``Options.FromMap``: unknown keys ignored, wrong types rejected with Ollama's message."""
    for key, value in options:
        if value is None:
            continue
        if key in _INT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ApiError(500, f'option "{key}" must be of type integer')
            values[key] = int(value)
        elif key in _FLOAT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ApiError(500, f'option "{key}" must be of type float32')
            values[key] = float(value)
        elif key == "use_mmap":
            if not isinstance(value, bool):
                raise ApiError(500, f'option "{key}" must be of type boolean')
            values[key] = value
        elif key == "stop":
            if not isinstance(value, (list, tuple)):
                raise ApiError(500, f'option "{key}" must be of type array')
            if not all(isinstance(item, str) for item in value):
                raise ApiError(500, f'option "{key}" must be of an array of strings')
            values[key] = list(value)


def resolve_options(
    default_num_ctx: int, parameters: Iterable[tuple[str, Any]], requested: dict[str, Any] | None
) -> Options:
    values = default_options(default_num_ctx)
    _apply(values, parameters)
    _apply(values, (requested or {}).items())
    return Options(values)
