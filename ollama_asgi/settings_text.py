"""Reading settings from text: what the loaders get ("30s", "2MiB", "a,b", JSON lists, ``name=value``
pairs) in the shape of a setting's declared type.

``Settings.from_env`` and ``from_mapping`` see text and loose forms (a YAML ``2.0``, a JSON object);
keyword arguments never do. Reading only shapes a value: its bounds are checked once, at
construction, whichever way it came in. Every error names the setting, and an unknown name comes
with the closest valid one.
"""

from __future__ import annotations

import difflib
import json
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from ollama_asgi.durations import DURATION, parse_duration
from ollama_asgi.errors import ConfigError
from ollama_asgi.options import OPTION_KINDS, RUNNER_OPTIONS

__all__ = [
    "read_as",
    "read_entries",
    "read_keep_alive",
    "read_pairs",
    "read_runner_options",
    "reject_unknown",
    "runner_option_kind",
    "suggest",
    "within",
]

_T = TypeVar("_T")

_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_SIZE_SUFFIXES = (("kib", 1024), ("mib", 1024**2), ("gib", 1024**3), ("tib", 1024**4), ("k", 1024))


def read_as(value: object, tp: Any, field: str) -> object:
    """``value`` as a loader got it, in the shape of ``tp``; its bounds are checked at construction."""
    metadata: tuple[object, ...] = ()
    if get_origin(tp) is Annotated:
        metadata, tp = tp.__metadata__, tp.__origin__
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union or origin is types.UnionType:
        if value is None or value == "":
            return None
        arms = [arm for arm in args if arm is not type(None)]
        return read_as(value, arms[0], field) if len(arms) == 1 else value
    if isinstance(value, str):
        text = value.strip()
        if DURATION in metadata:
            return parse_duration(text, field=field)
        if tp is bool:
            if text.lower() not in _BOOL_WORDS:
                raise ConfigError(field, f"expected true or false, got {value!r}")
            return _BOOL_WORDS[text.lower()]
        if tp is int:
            return _read_int(text, field)
        if tp is float:
            try:
                return float(text)
            except ValueError:
                raise ConfigError(field, f"expected a number, got {value!r}") from None
        if origin is tuple:
            value = _items(text)
    if origin is tuple and isinstance(value, list | tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(read_as(item, args[0], field) for item in value)
        if len(args) == len(value):
            return tuple(read_as(item, arg, field) for item, arg in zip(value, args, strict=True))
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 2.0 from a YAML or JSON file
    return value


def _read_int(text: str, field: str) -> int:
    """``4``, ``1_000``, ``512k`` or ``24GiB``: sizes in bytes are common settings."""
    digits, multiplier = text.replace("_", ""), 1
    for suffix, factor in _SIZE_SUFFIXES:
        if digits.lower().endswith(suffix):
            digits, multiplier = digits[: -len(suffix)], factor
            break
    try:
        return int(digits) * multiplier
    except ValueError:
        raise ConfigError(field, f"expected an integer, got {text!r}") from None


def _items(text: str) -> list[object]:
    """A JSON list, or comma-separated parts."""
    if text.startswith("["):
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = None
        if isinstance(decoded, list):
            return decoded
    return [part.strip() for part in text.split(",") if part.strip()]


def read_entries(value: object) -> list[object]:
    """The entries of a list-valued setting: a JSON list or object, comma-separated text, or a sequence."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                return read_entries(json.loads(text))
            except ValueError:
                pass
        return _items(text)
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, bytes):
        return list(value)
    return [value]


def read_pairs(value: object, field: str) -> list[tuple[str, object]]:
    """``name=value`` pairs from a mapping, a list of pairs or ``a=1,b=2`` text."""
    if isinstance(value, str) and value.strip().startswith("{"):
        value = read_entries(value)[0]
    items = list(value.items()) if isinstance(value, Mapping) else read_entries(value)
    pairs: list[tuple[str, object]] = []
    for item in items:
        if isinstance(item, tuple | list) and len(item) == 2:
            name, raw = item
        elif isinstance(item, str) and "=" in item:
            name, _, raw = item.partition("=")
        else:
            raise ConfigError(field, f"expected name=value, got {item!r}")
        pairs.append((str(name).strip(), raw))
    return pairs


def reject_unknown(entry: Mapping[str, object], known: tuple[str, ...], field: str, what: str) -> None:
    """Refuse a key of ``entry`` (a backend's, an API key's) that is not ``known``, naming the closest one."""
    for key in entry:
        if key not in known:
            raise ConfigError(field, f"unknown key {key!r} in {what}{suggest(key, known, noun='keys')}")


def within(field: str, build: Callable[[], _T]) -> _T:
    """Build a part of ``field``; its own errors are reported as that setting's."""
    try:
        return build()
    except ConfigError as exc:
        if exc.field == field:
            raise
        raise ConfigError(field, f"{exc.field.rpartition('.')[2]}: {exc.detail}") from None


def read_runner_options(value: object, field: str) -> tuple[tuple[str, object], ...]:
    """``num_thread=8,use_mmap=false`` as the pairs Ollama reads: each value in its option's kind."""
    if value is None or value == "":
        return ()
    kinds = {"bool": bool, "int": int}
    return tuple(
        (name, read_as(raw, kinds[runner_option_kind(name, field)], field)) for name, raw in read_pairs(value, field)
    )


def read_keep_alive(value: object, field: str) -> object:
    """Numbers are seconds, and a negative one means forever, as Ollama reads them."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value}s" if value >= 0 else "-1s"
    return value


def runner_option_kind(name: str, field: str) -> str:
    """The Go kind Ollama reads a runner option as: ``bool`` or ``int``; num_ctx is the buckets' business."""
    if name not in RUNNER_OPTIONS or name == "num_ctx":
        allowed = sorted(RUNNER_OPTIONS - {"num_ctx"})
        raise ConfigError(field, f"{name!r} is not a runner option{suggest(name, allowed, noun='runner options')}")
    return "bool" if OPTION_KINDS[name] == "bool" else "int"


def suggest(name: str, names: Iterable[str], prefix: str = "", *, noun: str = "settings") -> str:
    """The end of an "unknown name" message: the closest valid name, or all of them."""
    names = list(names)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if close:
        shown = prefix + close[0].upper() if prefix else close[0]
        return f"; did you mean {shown!r}?"
    return f"; valid {noun} are: {', '.join(names)}"
