"""Durations as Ollama's Go code writes them (``30s``, ``1h30m``, ``250ms``) or as plain seconds.

Settings read them (timeouts, ``keep_alive``) and so does the request path (a client's
``keep_alive``, ``X-Request-Timeout``); one parser here serves both, so neither imports the other.
"""

from __future__ import annotations

import math
import re

from ollama_asgi.errors import ConfigError

__all__ = ["DURATION", "go_duration", "parse_duration"]


class _Duration:
    """Marks seconds that the loaders also read from Go-style text such as ``30s`` or ``1h30m``."""


DURATION = _Duration()  # in a declared type's metadata: ``Annotated[float, Meta(ge=0.0), DURATION]``

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: object, *, field: str = "duration") -> float:
    """Seconds from ``30``, ``2.5``, ``"30s"``, ``"5m"``, ``"1h30m"`` or ``"250ms"`` (Go-style units)."""
    if isinstance(value, bool):
        raise ConfigError(field, f"expected a duration such as 30s or 5m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ConfigError(field, f"expected a duration such as 30s or 5m, got {value!r}") from None
    else:
        raise ConfigError(field, f"expected a duration such as 30s or 5m, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(field, f"must be a finite, non-negative duration, got {value!r}")
    return seconds


def go_duration(value: str, field: str) -> str:
    """A keep_alive as Ollama reads it: Go-style, a bare number is seconds, a negative one forever."""
    text = value.strip()
    parse_duration(text.removeprefix("-"), field=field)
    return f"{text}s" if text.replace(".", "").removeprefix("-").isdigit() else text
