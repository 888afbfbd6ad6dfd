"""What a request asks of the model's runner, checked as Ollama reads it: ``options`` (sampling
and load-time), the ``/v1`` fields that become options, and ``keep_alive``.

Ollama answers a wrong option type with a 500 and accepts absurd values it later chokes on; these
checks answer a clear 400 instead, in Ollama's words where it has any. The kinds tables are also
what settings read the gateway's own ``runner_options`` by.
"""

from __future__ import annotations

import re
from typing import Any

from ollama_asgi.durations import parse_duration
from ollama_asgi.errors import GatewayError
from ollama_asgi.json_types import json_type_name

__all__ = [
    "LEGACY_OPTION_KINDS",
    "NUMBER_TYPES",
    "OPTION_KINDS",
    "RUNNER_OPTIONS",
    "check_openai_sampling",
    "check_options",
    "parse_keep_alive",
]

# Ollama's api.Options and api.Runner (v0.24), as Options.FromMap reads them: key -> Go kind. It
# looks keys up exactly (``NUM_CTX`` is ignored) and skips nulls.
_READ_OPTION_KINDS: dict[str, str] = {
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "int",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "strings",
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
    "draft_num_predict": "int",  # a runner option of newer versions (speculative decoding)
}
# Options of earlier Ollama versions, which v0.24 and newer ignore whatever their value (``mirostat:
# "x"`` is answered 200): a request's are not checked, as Ollama does not check them. Their kinds
# remain for the gateway's own ``runner_options`` setting, which an older backend may still read.
LEGACY_OPTION_KINDS: dict[str, str] = {
    "mirostat": "int",
    "mirostat_tau": "float",
    "mirostat_eta": "float",
    "tfs_z": "float",
    "penalize_newline": "bool",
    "numa": "bool",
    "low_vram": "bool",
    "f16_kv": "bool",
    "vocab_only": "bool",
    "use_mlock": "bool",
    "logits_all": "bool",
}
OPTION_KINDS: dict[str, str] = {**_READ_OPTION_KINDS, **LEGACY_OPTION_KINDS}  # what settings read kinds from
_INT_OPTIONS = frozenset(key for key, kind in _READ_OPTION_KINDS.items() if kind == "int")
_FLOAT_OPTIONS = frozenset(key for key, kind in _READ_OPTION_KINDS.items() if kind == "float")
# Options fixed when a model is loaded: a request whose value differs from the loaded runner's makes
# Ollama reload the model for everyone (``shift`` is a request field with the same effect on newer
# versions). The gateway owns them, as it owns num_ctx.
RUNNER_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "use_mmap",
        "num_thread",
        "draft_num_predict",
        "numa",
        "low_vram",
        "f16_kv",
        "vocab_only",
        "use_mlock",
        "logits_all",
    }
)
_INT64 = 2**63
_INT64_MIN = -_INT64
_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_MIN = -_FLOAT32_MAX
_GO_DURATION = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")

# Tuples for isinstance: ``int | float`` builds a union object each time it runs (per request).
NUMBER_TYPES = (int, float)
_NUMBER_OR_TEXT = (int, float, str)


def _bad(message: str) -> GatewayError:
    return GatewayError(400, message)


def parse_keep_alive(value: object) -> float:
    """Seconds, as Ollama reads ``keep_alive``: numbers are seconds, strings Go durations; < 0 is forever."""
    if isinstance(value, bool) or not isinstance(value, _NUMBER_OR_TEXT):
        raise _bad(f"keep_alive: Unsupported type: '{json_type_name(value)}'")
    if isinstance(value, str):
        text = value  # Go trims nothing: " 5m" is an invalid duration
        unsigned = text[1:] if text[:1] in ("-", "+") else text
        if unsigned == "0":  # Go's ParseDuration takes a bare zero, the one number without a unit
            return 0.0
        if not _GO_DURATION.fullmatch(text):
            if re.fullmatch(r"[-+]?\d+(?:\.\d+)?", text):
                raise _bad(f'time: missing unit in duration "{value}"')
            raise _bad(f'time: invalid duration "{value}"')
        seconds = parse_duration(unsigned, field="keep_alive")
        return -seconds if text.startswith("-") else seconds
    return float(value)


def _option_error(key: str, value: object, kind: str) -> GatewayError | None:
    """Why ``value`` is not what FromMap accepts for ``key``, or None when it is."""
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, NUMBER_TYPES):
            return _bad(f'option "{key}" must be of type integer')
        if isinstance(value, float) and not value.is_integer():
            return _bad(f'option "{key}" must be of type integer')
        if not _INT64_MIN <= value < _INT64:
            return _bad(f'option "{key}" is out of range, got {value}')
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, NUMBER_TYPES):
            return _bad(f'option "{key}" must be of type float32')
        if not _FLOAT32_MIN <= value <= _FLOAT32_MAX:  # Ollama keeps a float32: this would be infinity
            return _bad(f'option "{key}" must be a finite number, got {value}')
    elif kind == "bool":
        if not isinstance(value, bool):
            return _bad(f'option "{key}" must be of type boolean')
    elif kind == "strings":
        if not isinstance(value, list):
            return _bad(f'option "{key}" must be of type array')
        if not all(isinstance(item, str) for item in value):
            return _bad(f'option "{key}" must be of an array of strings')
    return None


def _raise_if_bad(key: str, value: object, kind: str) -> None:
    error = _option_error(key, value, kind)
    if error is not None:
        raise error


def check_options(options: object, max_num_ctx: int) -> dict[str, Any]:
    """``options`` as Ollama would read them, with nulls dropped (Ollama skips them: unset).

    Returns the same dict when nothing was dropped, so the common case copies nothing.
    """
    if not isinstance(options, dict):
        raise _bad(f"options must be an object, got {json_type_name(options)}")
    nulls = False
    for key, value in options.items():
        # Plain ints and floats in range (nearly every option) are settled here; the rest are asked.
        if value is None:
            nulls = True
        elif key in _INT_OPTIONS:
            if value.__class__ is not int or not _INT64_MIN <= value < _INT64:
                _raise_if_bad(key, value, "int")
        elif key in _FLOAT_OPTIONS:
            if (value.__class__ is not float and value.__class__ is not int) or not (
                _FLOAT32_MIN <= value <= _FLOAT32_MAX
            ):
                _raise_if_bad(key, value, "float")
        elif key in _READ_OPTION_KINDS:
            _raise_if_bad(key, value, _READ_OPTION_KINDS[key])
    if nulls:
        options = {key: value for key, value in options.items() if value is not None}
    num_ctx = options.get("num_ctx")
    if num_ctx is not None and not 1 <= num_ctx <= max_num_ctx:
        raise _bad(f"options.num_ctx must be between 1 and {max_num_ctx}, got {num_ctx}")
    num_predict = options.get("num_predict")
    if num_predict is not None and num_predict < -2:
        raise _bad(f"options.num_predict must be -1 (no limit), -2 (fill context) or positive, got {num_predict}")
    return options


def check_openai_sampling(body: dict[str, Any]) -> None:
    """The ``/v1`` fields that become options: the same checks, named as the client spelled them."""
    for key in ("max_tokens", "max_completion_tokens", "seed"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _bad(f"{key} must be an integer, got {json_type_name(value)}")
    for key in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, NUMBER_TYPES):
            raise _bad(f"{key} must be a number, got {json_type_name(value)}")
        if not _FLOAT32_MIN <= value <= _FLOAT32_MAX:
            raise _bad(f"{key} must be a finite number, got {value}")
