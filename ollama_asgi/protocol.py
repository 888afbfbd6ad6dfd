"""Parse and check a request body once, before anything is sent upstream.

Ollama answers a wrong option type with a 500 and accepts absurd values it later chokes on; the
gateway checks the fields it relies on (model, stream, options, keep_alive) and answers a clear
400 instead. Unknown fields pass through untouched, as Ollama ignores them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from ollama_asgi.errors import GatewayError
from ollama_asgi.routing import Route
from ollama_asgi.settings import parse_duration

__all__ = ["ParsedRequest", "canonical_model", "parse_keep_alive", "parse_request"]

# [host[:port]/][namespace/]model[:tag] as Ollama accepts it; no empty, "." or ".." segments.
_MODEL_NAME = re.compile(
    r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(?::[0-9]+)?(?:/[A-Za-z0-9_][A-Za-z0-9_.\-]*){0,2}(?::[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?"
)
_MAX_MODEL_LEN = 350
_INT_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_predict",
        "num_keep",
        "seed",
        "top_k",
        "repeat_last_n",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "mirostat",
    }
)
_FLOAT_OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "mirostat_tau",
        "mirostat_eta",
    }
)
_GO_DURATION = re.compile(r"-?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")


@dataclass(slots=True)
class ParsedRequest:
    """What later steps need to know about a request, parsed exactly once."""

    body: dict[str, Any]
    model: str | None
    stream: bool


_CANONICAL: dict[str, str] = {}
_CANONICAL_MAX = 4096  # names come from clients: the memo is bounded


def canonical_model(name: str) -> str:
    """Ollama's lookup form: lower case, ``:latest`` when no tag is given.

    Memoised: every request asks for it several times (placement, loads, accounting).
    """
    found = _CANONICAL.get(name)
    if found is not None:
        return found
    lowered = name.lower()
    last = lowered.rsplit("/", 1)[-1]
    found = lowered if ":" in last else lowered + ":latest"
    if len(_CANONICAL) >= _CANONICAL_MAX:
        _CANONICAL.clear()
    _CANONICAL[name] = found
    return found


# Tuples for isinstance: ``int | float`` builds a union object each time it runs (per request).
NUMBER_TYPES = (int, float)
_NUMBER_OR_TEXT = (int, float, str)


def _bad(message: str) -> GatewayError:
    return GatewayError(400, message)


def _type_name(value: object) -> str:
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), "null" if value is None else type(value).__name__)


def parse_keep_alive(value: object) -> float:
    """Seconds, as Ollama reads ``keep_alive``: numbers are seconds, strings Go durations; < 0 is forever."""
    if isinstance(value, bool) or not isinstance(value, _NUMBER_OR_TEXT):
        raise _bad(f"keep_alive: Unsupported type: '{_type_name(value)}'")
    if isinstance(value, str):
        if not _GO_DURATION.fullmatch(value.strip()):
            if re.fullmatch(r"-?\d+(?:\.\d+)?", value.strip()):
                raise _bad(f'time: missing unit in duration "{value}"')
            raise _bad(f'time: invalid duration "{value}"')
        negative = value.strip().startswith("-")
        seconds = parse_duration(value.strip().lstrip("-"), field="keep_alive")
        return -seconds if negative else seconds
    return float(value)


def _check_options(options: object, max_num_ctx: int) -> None:
    if not isinstance(options, dict):
        raise _bad(f"options must be an object, got {_type_name(options)}")
    for key, value in options.items():
        if key in _INT_OPTIONS:
            if (
                isinstance(value, bool)
                or not isinstance(value, NUMBER_TYPES)
                or (isinstance(value, float) and not value.is_integer())
            ):
                raise _bad(f'option "{key}" must be of type integer')
        elif key in _FLOAT_OPTIONS and (isinstance(value, bool) or not isinstance(value, NUMBER_TYPES)):
            raise _bad(f'option "{key}" must be of type number')
    num_ctx = options.get("num_ctx")
    if num_ctx is not None and not 1 <= num_ctx <= max_num_ctx:
        raise _bad(f"options.num_ctx must be between 1 and {max_num_ctx}, got {num_ctx}")
    num_predict = options.get("num_predict")
    if num_predict is not None and num_predict < -2:
        raise _bad(f"options.num_predict must be -1 (no limit), -2 (fill context) or positive, got {num_predict}")


_VALID_NAMES: set[str] = set()  # names that passed, so the pattern runs once per name (bounded)


def check_model_name(name: object) -> str:
    if name.__class__ is str and name in _VALID_NAMES:
        return name
    if not isinstance(name, str):
        raise _bad(f"model must be a string, got {_type_name(name)}")
    if not name:
        raise _bad("model is required")
    if len(name) > _MAX_MODEL_LEN or not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise _bad(f"invalid model name {name[:100]!r}")
    if len(_VALID_NAMES) >= _CANONICAL_MAX:
        _VALID_NAMES.clear()
    _VALID_NAMES.add(name)
    return name


def parse_request(route: Route, raw: bytes, *, max_num_ctx: int) -> ParsedRequest:
    """Parse ``raw`` for ``route``; raise a 400 ``GatewayError`` naming what is wrong."""
    if not raw.strip():
        raise _bad("missing request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise _bad(f"request body must be a JSON object, got {_type_name(body)}")

    model: str | None = None
    for key in route.model_keys:
        if key in body and body[key] != "":
            model = check_model_name(body[key])
            break
    if model is None and route.model_required:
        raise _bad("model is required")

    stream = route.stream_default
    if "stream" in body and body["stream"] is not None:
        if not isinstance(body["stream"], bool):
            raise _bad(f"stream must be a boolean, got {_type_name(body['stream'])}")
        if stream is not None:
            stream = body["stream"]
    if "options" in body and body["options"] is not None:
        _check_options(body["options"], max_num_ctx)
    if "keep_alive" in body and body["keep_alive"] is not None:
        parse_keep_alive(body["keep_alive"])
    for key, kind, name in (
        ("messages", list, "an array"),
        ("prompt", str, "a string"),
        ("system", str, "a string"),
        ("images", list, "an array"),
    ):
        if key in body and body[key] is not None and not isinstance(body[key], kind):
            raise _bad(f"{key} must be {name}, got {_type_name(body[key])}")
    if route.openai:
        for key in ("max_tokens", "max_completion_tokens", "seed"):
            value = body.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise _bad(f"{key} must be an integer, got {_type_name(value)}")
    return ParsedRequest(body=body, model=model, stream=bool(stream))
