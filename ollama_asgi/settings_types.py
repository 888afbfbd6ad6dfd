"""The types settings declare, and the one check that holds a constructed object to them.

A field's declared type, bounds included (``Annotated[int, Meta(ge=1)]``), is what a keyword
argument must be. msgspec checks a whole object against its annotations in one pass at
construction, so the request path never re-checks configuration; its complaint is reworded as a
:class:`ConfigError` naming the field, like every other settings error.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypedDict, cast, get_args, get_origin, get_type_hints

import msgspec
from msgspec import Meta

from ollama_asgi.durations import DURATION
from ollama_asgi.errors import ConfigError

__all__ = [
    "AuthMode",
    "ContextSize",
    "NonNegativeFloat",
    "NonNegativeInt",
    "Port",
    "PositiveInt",
    "PositiveSeconds",
    "Priority",
    "Seconds",
    "Sha256",
    "Text",
    "Weight",
    "check",
    "field_types",
]

AuthMode = Literal["host", "api_key", "none"]
Priority = Literal["interactive", "batch"]

# The declared types, with the bounds construction checks.
PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
ContextSize = Annotated[int, Meta(ge=256)]
Port = Annotated[int, Meta(ge=1, le=65535)]
Weight = Annotated[float, Meta(ge=0.001)]
NonNegativeFloat = Annotated[float, Meta(ge=0.0)]
Seconds = Annotated[float, Meta(ge=0.0), DURATION]
PositiveSeconds = Annotated[float, Meta(gt=0.0), DURATION]
Text = Annotated[str, Meta(min_length=1)]
Sha256 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


@dataclass(frozen=True, slots=True)
class _Shape:
    """A settings class's fields as msgspec checks them (one TypedDict: one pass, types cached)."""

    checked: Any
    hints: dict[str, Any]
    names: tuple[str, ...]
    durations: tuple[str, ...]


_SHAPES: dict[type, _Shape] = {}


def _shape(cls: type) -> _Shape:
    shape = _SHAPES.get(cls)
    if shape is None:
        hints = get_type_hints(cls, include_extras=True)  # evaluated once: they are text until then
        names = tuple(f.name for f in dataclasses.fields(cls))
        checked = cast(Any, TypedDict)(f"{cls.__name__}Fields", {name: hints[name] for name in names})
        durations = tuple(name for name in names if DURATION in getattr(hints[name], "__metadata__", ()))
        shape = _SHAPES[cls] = _Shape(checked, hints, names, durations)
    return shape


def field_types(cls: type) -> dict[str, Any]:
    """A settings dataclass's declared field types, bounds included, for the loaders to read into."""
    return _shape(cls).hints


_AT = re.compile(r" - at `\$\.?(.*)`$")


def check(obj: object, *, owner: str) -> None:
    """Hold every field to its declared type and bounds; ints become floats and lists tuples, as declared.

    An error names the field as ``owner`` and its name: ``"ApiKey.sha256"``, or ``"parallel"`` for
    Settings' own fields (``owner=""``).
    """
    shape = _shape(type(obj))
    values = {name: getattr(obj, name) for name in shape.names}
    try:
        checked = msgspec.convert(values, shape.checked)
    except msgspec.ValidationError as exc:
        raise _config_error(str(exc), shape, values, owner) from None
    for name in shape.durations:
        if not math.isfinite(checked[name]):
            raise ConfigError(owner + name, f"must be a finite duration, got {checked[name]!r}")
    for name, value in checked.items():
        if value is not values[name]:
            object.__setattr__(obj, name, value)


_BOUND = re.compile(r"^Expected `\w+` (>=|>|<=|<) (\S+)$")
_BOUND_WORDS = {">=": "at least", ">": "greater than", "<=": "at most", "<": "less than"}


def _config_error(message: str, shape: _Shape, values: dict[str, Any], owner: str) -> ConfigError:
    """msgspec's complaint in the words of the other settings errors, naming the field."""
    at = _AT.search(message)
    path = at.group(1) if at else ""
    name = re.split(r"[.\[]", path, maxsplit=1)[0]
    detail = message[: at.start()] if at else message
    got = f", got {values.get(name)!r}" if path == name else f" (at {path})"
    bound = _BOUND.match(detail)
    if path == name and get_origin(shape.hints.get(name)) is Literal:
        detail = f"must be one of {', '.join(map(str, get_args(shape.hints[name])))}{got}"
    elif bound:
        detail = f"must be {_BOUND_WORDS[bound[1]]} {bound[2]}{got}"
    elif path != name:
        detail += got
    if "got `str`" in detail:
        detail += "; text such as '30s' or 'id=secret' is read by Settings.from_mapping and from_env"
    return ConfigError(owner + name, detail)
