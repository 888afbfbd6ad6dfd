"""Serve the OpenAI-compatible API from Ollama's native endpoints: the requests.

Ollama's own ``/v1`` layer cannot carry ``num_ctx`` or ``keep_alive``, so every ``/v1`` request
asks for the default context and a mix of ``/v1`` and native traffic reloads the model back and
forth; and when a ``/v1`` stream fails it ends without the error. The gateway therefore maps
``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` onto ``/api/chat``,
``/api/generate`` and ``/api/embed`` (where it can size the context), here: each request checked
as Ollama's ``/v1`` checks it, in its words, and translated as it translates it. The answers are
rendered back in ``openai_answers``.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from ollama_asgi.errors import GatewayError

__all__ = ["check_field_types", "to_native"]


# The request structs of Ollama's /v1 layer (v0.24): each field's Go type, for Go's own refusal of
# a value of the wrong JSON type. ``stop`` and ``input`` take more than one type.
_STRUCTS: dict[str, tuple[str, dict[str, str]]] = {
    "openai_chat": (
        "ChatCompletionRequest",
        {
            "model": "string",
            "messages": "[]openai.Message",
            "stream": "bool",
            "stream_options": "openai.StreamOptions",
            "max_tokens": "int",
            "seed": "int",
            "temperature": "float64",
            "frequency_penalty": "float64",
            "presence_penalty": "float64",
            "top_p": "float64",
            "response_format": "openai.ResponseFormat",
            "tools": "[]api.Tool",
            "reasoning": "openai.Reasoning",
            "reasoning_effort": "string",
            "logprobs": "bool",
            "top_logprobs": "int",
            "_debug_render_only": "bool",
        },
    ),
    "openai_completions": (
        "CompletionRequest",
        {
            "model": "string",
            "prompt": "string",
            "frequency_penalty": "float32",
            "max_tokens": "int",
            "presence_penalty": "float32",
            "seed": "int",
            "stream": "bool",
            "stream_options": "openai.StreamOptions",
            "temperature": "float32",
            "top_p": "float32",
            "suffix": "string",
            "logprobs": "int",
            "_debug_render_only": "bool",
        },
    ),
    "openai_embeddings": ("EmbedRequest", {"model": "string", "dimensions": "int", "encoding_format": "string"}),
}
_INT64 = 1 << 63
_SCALAR_KINDS = {"string": "string", "bool": "bool", "int": "number", "float64": "number", "float32": "number"}


def check_field_types(route: str, req: dict[str, Any]) -> None:
    """Refuse the first field (in the body's order) whose JSON type its Go field cannot take, in the
    words of Go's decoder, as Ollama's ``/v1`` does before anything else."""
    struct = _STRUCTS.get(route)
    if struct is None:
        return
    name, types = struct
    for key, value in req.items():
        go_type = types.get(key)
        if go_type is None or value is None:
            continue
        kind = _json_kind(value)
        if go_type == "int" and kind == "number":
            if isinstance(value, int) and -_INT64 <= value < _INT64:
                continue
            kind = f"number {value}"  # Go names a number an int cannot hold
        elif kind == _SCALAR_KINDS.get(go_type, "array" if go_type.startswith("[]") else "object"):
            continue
        raise GatewayError(400, f"json: cannot unmarshal {kind} into Go struct field {name}.{key} of type {go_type}")


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _options(req: dict[str, Any], route: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    stop = req.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        # Ollama's chat skips stop entries that are not strings; its completions refuse them.
        if route == "openai_chat":
            stop = [s for s in stop if isinstance(s, str)]
        for s in stop:
            if not isinstance(s, str):
                raise GatewayError(400, f"invalid type for 'stop' field: {_go_type(s)}")
        options["stop"] = stop
    tokens = req.get("max_completion_tokens", req.get("max_tokens"))
    if tokens is not None:
        options["num_predict"] = tokens
    # Ollama's /v1 forces these to 1.0 when absent, overriding the Modelfile; so do we.
    options["temperature"] = req["temperature"] if req.get("temperature") is not None else 1.0
    options["top_p"] = req["top_p"] if req.get("top_p") is not None else 1.0
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        if req.get(key) is not None:
            options[key] = req[key]
    return options


def _format(req: dict[str, Any]) -> Any:
    fmt = req.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return "json"
    if fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema")
        return schema.get("schema") if isinstance(schema, dict) else None
    return None


def _messages(raw: object) -> list[dict[str, Any]]:
    """The native messages, made as Ollama's ``/v1`` makes them (each content part a message of its
    own, so the model sees the prompt it would see without the gateway)."""
    if not isinstance(raw, list) or not raw:
        raise GatewayError(400, "[] is too short - 'messages'")
    out: list[dict[str, Any]] = []
    for message in raw:
        if not isinstance(message, dict):
            raise GatewayError(400, "each message must be an object")
        role = message.get("role", "user")
        content = message.get("content")
        calls = message.get("tool_calls")
        native_calls = [_native_call(c) for c in calls] if isinstance(calls, list) else None
        extra: dict[str, Any] = {}
        reasoning = message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            extra["thinking"] = reasoning
        if native_calls:
            extra["tool_calls"] = native_calls
        if isinstance(role, str) and role.lower() == "tool":
            name = message.get("name")
            call_id = message.get("tool_call_id")
            if not (isinstance(name, str) and name) and isinstance(call_id, str) and call_id:
                name = _called_function(raw, call_id)
            if isinstance(name, str) and name:
                extra["tool_name"] = name
        call_id = message.get("tool_call_id")
        if isinstance(call_id, str) and call_id:
            extra["tool_call_id"] = call_id
        if isinstance(content, str):
            out.append({"role": role, "content": content, **extra})
        elif isinstance(content, list):
            out.extend(_part(role, part) for part in content)
            if out and native_calls:  # Ollama puts the calls (and what goes with them) on the last part
                out[-1].update(extra)
        elif calls is None:  # content may be left out only beside tool calls
            raise GatewayError(400, f"invalid message content type: {_go_type(content)}")
        else:
            extra.pop("tool_name", None)
            out.append({"role": role, "content": "", **extra})
    return out


def _go_type(value: object) -> str:
    """How Go's ``%T`` names a JSON value decoded into ``any``."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    return "map[string]interface {}" if isinstance(value, dict) else "[]interface {}"


_IMAGE_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp"))


def _part(role: object, part: object) -> dict[str, Any]:
    """One content part as a native message of its own."""
    if not isinstance(part, dict):
        raise GatewayError(400, "invalid message format")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if isinstance(text, str):
            return {"role": role, "content": text}
    elif kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if isinstance(url, str):
            return {"role": role, "content": "", "images": [_image_data(url)]}
    elif kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict):
            raise GatewayError(400, "invalid input_audio format")
        data = audio.get("data")
        if not isinstance(data, str):
            raise GatewayError(400, "invalid input_audio format: missing data")
        if not _is_base64(data):
            raise GatewayError(400, "invalid input_audio base64 data: illegal base64 data")
        return {"role": role, "content": "", "images": [data]}
    raise GatewayError(400, "invalid message format")


def _image_data(url: str) -> str:
    """The base64 of an image given as a data URL, the only kind Ollama's ``/v1`` takes."""
    if url.startswith(("http://", "https://")):
        raise GatewayError(400, "image URLs are not currently supported, please use base64 encoded data instead")
    if url.startswith("data:;base64,"):
        data = url[len("data:;base64,") :]
    elif url.startswith(_IMAGE_PREFIXES):
        data = url.split(";base64,", 1)[1]
    else:
        raise GatewayError(400, "invalid image input")
    if not _is_base64(data):
        raise GatewayError(400, "invalid image input")
    return data


def _is_base64(data: str) -> bool:
    try:
        base64.b64decode(data, validate=True)
    except ValueError:
        return False
    return True


def _called_function(messages: list[Any], call_id: object) -> str:
    """The function name of the assistant's call ``call_id`` (searched from the last message, as
    Ollama does): a tool result names its call only by id, and Ollama's templates want the name."""
    for message in reversed(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict) and call.get("id") == call_id:
                function = call.get("function")
                name = function.get("name") if isinstance(function, dict) else None
                return name if isinstance(name, str) else ""
    return ""


def _native_call(call: object) -> dict[str, Any]:
    """A request's tool call in native form, keeping its id (Ollama's templates may print it)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise GatewayError(400, "invalid tool call")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise GatewayError(400, "invalid tool call arguments") from None
    native: dict[str, Any] = {"function": {"name": function.get("name", ""), "arguments": parsed}}
    call_id = call.get("id") if isinstance(call, dict) else None
    if isinstance(call_id, str) and call_id:
        native = {"id": call_id, **native}
    return native


def to_native(route: str, req: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """The native path and body for a ``/v1`` request, and whether usage must be streamed."""
    stream = bool(req.get("stream"))
    options_stream = req.get("stream_options")
    include_usage = bool(stream and isinstance(options_stream, dict) and options_stream.get("include_usage"))
    if route == "openai_embeddings":
        fmt = req.get("encoding_format")
        if fmt and fmt.lower() not in ("float", "base64"):
            raise GatewayError(
                400, f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64']."
            )
        embed_input = req.get("input")
        if embed_input == "":  # Ollama's /v1 embeds the empty string; an empty native input only loads
            embed_input = [""]
        if embed_input is None or embed_input == []:
            raise GatewayError(400, "invalid input")
        if not isinstance(embed_input, str | list):
            raise GatewayError(400, "invalid input type")
        body: dict[str, Any] = {"model": req["model"], "input": embed_input}
        if req.get("dimensions") is not None:
            body["dimensions"] = req["dimensions"]
        return "/api/embed", body, False
    body = {"model": req["model"], "stream": stream, "options": _options(req, route)}
    fmt = _format(req)
    if fmt is not None:
        body["format"] = fmt
    if route == "openai_chat":
        body["messages"] = _messages(req.get("messages"))
        if isinstance(req.get("tools"), list):
            body["tools"] = req["tools"]
        think = _think(req)
        if think is not None:
            body["think"] = think
        _add_logprobs(body, bool(req.get("logprobs")), req.get("top_logprobs"))
        return "/api/chat", body, include_usage
    body["prompt"] = req.get("prompt") or ""
    if isinstance(req.get("suffix"), str):
        body["suffix"] = req["suffix"]
    # A completion's logprobs is the number of alternatives; Ollama answers it without them.
    top = req.get("logprobs")
    if top is not None and top > 0:
        _add_logprobs(body, True, top)
    return "/api/generate", body, include_usage


def _add_logprobs(body: dict[str, Any], wanted: bool, top: int | None) -> None:
    """Ask Ollama for logprobs, refusing the ``top_logprobs`` its handlers refuse (before any model
    is looked up, as Ollama does)."""
    if top is not None and not 0 <= top <= 20:
        raise GatewayError(400, "top_logprobs must be between 0 and 20")
    if wanted:
        body["logprobs"] = True
    if top:
        body["top_logprobs"] = top


_EFFORTS = frozenset({"high", "medium", "low", "max", "none"})


def _think(req: dict[str, Any]) -> bool | str | None:
    """Native ``think`` for a reasoning effort, mapped as Ollama's ``/v1`` maps it: a ``reasoning``
    object wins over ``reasoning_effort``, ``none`` turns thinking off, and an effort Ollama does
    not know is a 400."""
    reasoning = req.get("reasoning")
    if isinstance(reasoning, dict):
        effort = reasoning.get("effort")
        if effort is not None and not isinstance(effort, str):
            kind = _json_kind(effort)
            raise GatewayError(
                400,
                f"json: cannot unmarshal {kind} into Go struct field ChatCompletionRequest.reasoning.effort of type string",
            )
    else:
        effort = req.get("reasoning_effort")
    if not effort:
        return None
    if effort not in _EFFORTS:
        raise GatewayError(
            400, f'invalid reasoning value: \'{effort}\' (must be "high", "medium", "low", "max", or "none")'
        )
    return False if effort == "none" else effort
