"""Parse and check a request body once, before anything is sent upstream.

The body is read by Go's rules, as Ollama reads it (keys matched to fields case-insensitively, the
last duplicate winning, a bounded depth), and the fields the gateway relies on (model, stream,
options, keep_alive) are checked so that a wrong one is a clear 400 rather than Ollama's 500: the
checks of options and keep_alive are ``options``', those of model names ``model_names``'. Unknown
fields pass through untouched, as Ollama ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ollama_asgi.errors import GatewayError
from ollama_asgi.json_types import json_type_name
from ollama_asgi.model_names import check_model_name, check_model_source
from ollama_asgi.openai_compat import check_field_types
from ollama_asgi.options import check_openai_sampling, check_options, parse_keep_alive
from ollama_asgi.routing import Route

__all__ = ["MAX_JSON_DEPTH", "ParsedRequest", "parse_request"]

# Deepest JSON the gateway accepts: orjson writes no deeper, and every checked body is rewritten.
MAX_JSON_DEPTH = 254
_CONTAINERS = (dict, list)  # a tuple for isinstance: ``dict | list`` builds a union object each time


@dataclass(slots=True)
class ParsedRequest:
    """What later steps need to know about a request, parsed exactly once."""

    body: dict[str, Any]
    model: str | None
    stream: bool
    rewritten: bool = False  # body differs from the client's bytes: forward it re-serialised
    cloud: bool = False  # the model runs on ollama.com: nothing to load, no num_ctx, cloud policy applies


def _bad(message: str) -> GatewayError:
    return GatewayError(400, message)


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
        raise _bad(f"request body must be a JSON object, got {json_type_name(body)}")
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
            raise _bad(f"stream must be a boolean, got {json_type_name(body['stream'])}")
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
            raise _bad(f"{key} must be {name}, got {json_type_name(body[key])}")
    if route.openai:
        check_openai_sampling(body)
    return ParsedRequest(body=body, model=model, stream=bool(stream), rewritten=rewritten, cloud=cloud)
