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

from ollama_asgi.durations import parse_duration
from ollama_asgi.errors import GatewayError
from ollama_asgi.openai_compat import check_field_types
from ollama_asgi.routing import Route

__all__ = [
    "MAX_JSON_DEPTH",
    "LEGACY_OPTION_KINDS",
    "OPTION_KINDS",
    "RUNNER_OPTIONS",
    "ParsedRequest",
    "canonical_model",
    "check_options",
    "is_cloud_model",
    "parse_keep_alive",
    "parse_request",
]

# [host[:port]/][namespace/]model[:tag] as Ollama accepts it; no empty, "." or ".." segments.
_MODEL_NAME = re.compile(
    r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(?::[0-9]+)?(?:/[A-Za-z0-9_][A-Za-z0-9_.\-]*){0,2}(?::[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?"
    r"(?::(?i:cloud|local))?"  # Ollama's source suffix after a tag: m:tag:cloud, m:tag:local
)
_MAX_MODEL_LEN = 350
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
# Deepest JSON the gateway accepts: orjson writes no deeper, and every checked body is rewritten.
MAX_JSON_DEPTH = 254
_GO_DURATION = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")


@dataclass(slots=True)
class ParsedRequest:
    """What later steps need to know about a request, parsed exactly once."""

    body: dict[str, Any]
    model: str | None
    stream: bool
    rewritten: bool = False  # body differs from the client's bytes: forward it re-serialised
    cloud: bool = False  # the model runs on ollama.com: nothing to load, no num_ctx, cloud policy applies


_CANONICAL: dict[str, str] = {}
_CANONICAL_MAX = 4096  # names come from clients: the memo is bounded


def canonical_model(name: str) -> str:
    """Ollama's lookup form: lower case, ``:latest`` when no tag is given, no ``:local`` suffix
    (it only forces the local model, the one ``/api/ps`` and allow-lists name).

    Memoised: every request asks for it several times (placement, loads, accounting).
    """
    found = _CANONICAL.get(name)
    if found is not None:
        return found
    lowered = name.lower()
    if lowered.endswith(":local"):
        lowered = lowered[:-6]
    last = lowered.rsplit("/", 1)[-1]
    found = lowered if ":" in last else lowered + ":latest"
    if len(_CANONICAL) >= _CANONICAL_MAX:
        _CANONICAL.clear()
    _CANONICAL[name] = found
    return found


# Tuples for isinstance: ``int | float`` builds a union object each time it runs (per request).
NUMBER_TYPES = (int, float)
_NUMBER_OR_TEXT = (int, float, str)
_CONTAINERS = (dict, list)


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
        raise _bad(f"options must be an object, got {_type_name(options)}")
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


# The request fields Ollama's structs declare, per route (v0.24 api and openai packages). Go's
# encoding/json matches a key to a field case-insensitively (and with the last duplicate winning),
# so ``"Model"`` or ``"KEEP_ALIVE"`` is read by Ollama as ``model`` or ``keep_alive``; the gateway
# folds such keys to the field's name before it checks anything, and forwards what it checked.
_GENERATE_FIELDS = (
    "model prompt suffix system template context stream raw format keep_alive images options think truncate"
    " shift _debug_render_only logprobs top_logprobs width height steps"
)
_CHAT_FIELDS = (
    "model messages stream format keep_alive tools options think truncate shift _debug_render_only logprobs"
    " top_logprobs"
)
_OPENAI_SAMPLING = "stop temperature top_p frequency_penalty presence_penalty seed max_tokens max_completion_tokens"
_FIELDS: dict[str, frozenset[str]] = {
    name: frozenset(fields.split())
    for name, fields in {
        "generate": _GENERATE_FIELDS,
        "chat": _CHAT_FIELDS,
        "embed": "model input keep_alive truncate dimensions options",
        "embeddings": "model prompt keep_alive options",
        "show": "model name system template verbose options",
        "pull": "model name insecure username password stream",
        "push": "model name insecure username password stream",
        "create": (
            "model name stream quantize from remote_host files adapters template license system parameters"
            " messages renderer parser requires info quantization"
        ),
        "copy": "source destination",
        "delete": "model name",
        "openai_chat": (
            f"model messages stream stream_options response_format tools reasoning reasoning_effort logprobs"
            f" top_logprobs _debug_render_only {_OPENAI_SAMPLING}"
        ),
        "openai_completions": (
            f"model prompt suffix stream stream_options logprobs _debug_render_only {_OPENAI_SAMPLING}"
        ),
        "openai_embeddings": "model input dimensions encoding_format",
    }.items()
}
_MESSAGE_FIELDS = {
    "chat": frozenset(["role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id"]),
    "openai_chat": frozenset(["role", "content", "reasoning", "tool_calls", "name", "tool_call_id"]),
}
# Fields Go decodes into a map or a struct: a second spelling of the key merges into the first. (The
# same key twice is collapsed by the parser first, the last one kept.)
_MERGED = frozenset({"options", "files", "adapters", "parameters", "stream_options", "response_format", "reasoning"})
# Beside ASCII case, Go folds the Kelvin sign to k and the long s to s (``unicode.SimpleFold``).
_GO_FOLD = str.maketrans({"\u212a": "k", "\u017f": "s"})


def _go_field(key: str, fields: frozenset[str]) -> str | None:
    """The field Go's encoding/json assigns ``key`` to, or None when Ollama ignores it."""
    if key in fields:
        return key
    folded = key.translate(_GO_FOLD)
    if not folded.isascii():
        return None
    folded = folded.lower()
    return folded if folded in fields else None


def _fold_keys(obj: dict[str, Any], fields: frozenset[str]) -> dict[str, Any] | None:
    """``obj`` with every key spelled as the field Go assigns it to; None when it is spelled so already.

    Callers first ask ``fields.issuperset(obj)``, in C: the common case never gets here.
    """
    for key in obj:
        if key not in fields and _go_field(key, fields) is not None:
            break
    else:
        return None
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _go_field(key, fields)
        if name is None:
            out[key] = value
            continue
        earlier = out.pop(name, None)  # re-inserted: the last spelling is the one Go keeps
        if name in _MERGED and isinstance(earlier, dict) and isinstance(value, dict):
            value = {**earlier, **value}
        out[name] = value
    return out


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (iterative: no recursion limit)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values() if isinstance(child, _CONTAINERS))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item if isinstance(child, _CONTAINERS))
    return False


def _too_deep() -> GatewayError:
    return _bad(f"request body nests JSON deeper than {MAX_JSON_DEPTH} levels")


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


def _source_suffix(name: str) -> tuple[str, str | None]:
    """``(base, "cloud" | "local" | None)`` as Ollama's ``modelref`` reads the last ``:`` suffix."""
    head, sep, suffix = name.rpartition(":")
    if sep:
        lowered = suffix.lower()
        if lowered in ("cloud", "local"):
            return head, lowered
        if "/" not in suffix and lowered.endswith("-cloud"):
            return name[: -len("-cloud")], "cloud"
    return name, None


def is_cloud_model(name: str) -> bool:
    """True for names Ollama relays to ollama.com: ``m:cloud``, ``m:tag:cloud``, ``m:tag-cloud``.

    ``:local`` forces a local model, so ``m:tag-cloud:local`` is not one.
    """
    return _source_suffix(name)[1] == "cloud"


def check_model_source(name: str) -> bool:
    """Whether ``name`` is a cloud model; a 400 for both ``:cloud`` and ``:local``, as Ollama refuses it."""
    base, source = _source_suffix(name)
    if source is None:
        return False
    if _source_suffix(base)[1] is not None:
        raise _bad(f"use either :local or :cloud, not both: {orjson.dumps(name).decode()}")  # Ollama's words
    return source == "cloud"


_LOGPROB_ROUTES = frozenset({"chat", "generate"})


def parse_request(route: Route, raw: bytes, *, max_num_ctx: int) -> ParsedRequest:
    """Parse ``raw`` for ``route``; raise a 400 ``GatewayError`` naming what is wrong.

    Keys are folded to the fields Ollama reads them as and null options dropped; ``rewritten``
    then tells the gateway to forward ``body`` re-serialised, never the client's bytes.
    """
    if not raw.strip():
        raise _bad("missing request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            raise _too_deep() from None
        raise _bad(f"invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise _bad(f"request body must be a JSON object, got {_type_name(body)}")
    # Each level takes two bytes and counting brackets is cheap: only a body with that many is walked.
    if (
        len(raw) > 2 * MAX_JSON_DEPTH
        and raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH
        and _depth_exceeds(body, MAX_JSON_DEPTH)
    ):
        raise _too_deep()

    rewritten = False
    name = route.name
    fields = _FIELDS.get(name)
    if fields is not None and not fields.issuperset(body) and (folded := _fold_keys(body, fields)) is not None:
        body, rewritten = folded, True
    message_fields = _MESSAGE_FIELDS.get(name)
    if message_fields is not None:
        messages = body.get("messages")
        if messages.__class__ is list:
            for index, message in enumerate(messages):
                if (
                    message.__class__ is dict
                    and not message_fields.issuperset(message)
                    and (folded := _fold_keys(message, message_fields)) is not None
                ):
                    messages[index] = folded
                    rewritten = True
    if route.openai:
        check_field_types(name, body)
    elif name in _LOGPROB_ROUTES:
        top = body.get("top_logprobs")
        if top.__class__ is int and not 0 <= top <= 20:  # Ollama's first check, before the model's
            raise _bad("top_logprobs must be between 0 and 20")

    model: str | None = None
    for key in route.model_keys:
        if key in body and body[key] != "":
            model = check_model_name(body[key])
            break
    if model is None and route.model_required:
        raise _bad("model is required")
    cloud = model is not None and ":" in model and check_model_source(model)

    stream = route.stream_default
    if "stream" in body and body["stream"] is not None:
        if not isinstance(body["stream"], bool):
            raise _bad(f"stream must be a boolean, got {_type_name(body['stream'])}")
        if stream is not None:
            stream = body["stream"]
    options = body.get("options")
    if options is not None:
        checked = check_options(options, max_num_ctx)
        if checked is not options:
            body["options"] = checked
            rewritten = True
    if "keep_alive" in body and body["keep_alive"] is not None:
        parse_keep_alive(body["keep_alive"])
    for key, kind, name in (
        ("messages", list, "an array"),
        ("prompt", str, "a string"),
        ("system", str, "a string"),
        ("images", list, "an array"),
    ):
        if key == "system" and route.name == "anthropic_messages":
            continue  # Anthropic's system prompt may be an array of text blocks
        if key in body and body[key] is not None and not isinstance(body[key], kind):
            raise _bad(f"{key} must be {name}, got {_type_name(body[key])}")
    if route.openai:
        _check_openai_sampling(body)
    return ParsedRequest(body=body, model=model, stream=bool(stream), rewritten=rewritten, cloud=cloud)


def _check_openai_sampling(body: dict[str, Any]) -> None:
    """The ``/v1`` fields that become options: the same checks, named as the client spelled them."""
    for key in ("max_tokens", "max_completion_tokens", "seed"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _bad(f"{key} must be an integer, got {_type_name(value)}")
    for key in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, NUMBER_TYPES):
            raise _bad(f"{key} must be a number, got {_type_name(value)}")
        if not _FLOAT32_MIN <= value <= _FLOAT32_MAX:
            raise _bad(f"{key} must be a finite number, got {value}")
