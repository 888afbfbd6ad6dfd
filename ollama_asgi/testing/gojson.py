"""Decoding request bodies the way Go's ``encoding/json`` does, with the same error texts."""

from __future__ import annotations

import json
from typing import Any

import orjson

from ollama_asgi.testing.wire import ApiError, EmptyBody, go_quote, json_type_name, parse_keep_alive

__all__ = ["STRUCTS", "base64_error_at", "check_struct", "decode_json", "decode_request"]


def _open_container(doc: str, pos: int) -> str:
    stack: list[str] = []
    in_string = escaped = False
    for char in doc[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _go_syntax_error(doc: str, err: json.JSONDecodeError) -> str:
    pos = err.pos
    if pos >= len(doc.rstrip()) or err.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    char = doc[pos]
    if char in _LITERALS:
        return _literal_error(doc, pos)
    shown = "'\\''" if char == "'" else f"'{char}'"
    if err.msg.startswith("Expecting property name"):
        where = "looking for beginning of object key string"
    elif err.msg.startswith("Expecting ':'"):
        where = "after object key"
    elif err.msg.startswith("Expecting ','"):
        where = "after object key:value pair" if _open_container(doc, pos) == "{" else "after array element"
    elif err.msg.startswith("Invalid control character"):
        where = "in string literal"
    elif err.msg.startswith("Invalid \\"):
        where = "in string escape code"
    else:
        where = "looking for beginning of value"
    return f"invalid character {shown} {where}"


_LITERALS = {"t": "true", "f": "false", "n": "null"}


def _literal_error(doc: str, pos: int) -> str:
    """Go reads a ``t``, ``f`` or ``n`` as the start of its literal and names the first wrong character."""
    literal = _LITERALS[doc[pos]]
    for offset, expected in enumerate(literal[1:], start=1):
        if pos + offset >= len(doc):
            return "unexpected EOF"
        char = doc[pos + offset]
        if char != expected:
            shown = "'\\''" if char == "'" else f"'{char}'"
            return f"invalid character {shown} in literal {literal} (expecting '{expected}')"
    char = doc[pos + len(literal)]
    shown = "'\\''" if char == "'" else f"'{char}'"
    return f"invalid character {shown} after top-level value"


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def decode_json(body: bytes) -> Any:
    """Decode like Go's ``json.Decoder``: first value only, Go's error texts, ``EmptyBody`` if blank."""
    if not body.strip():
        raise EmptyBody()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    doc = body.decode("utf-8", errors="replace")
    start = len(doc) - len(doc.lstrip())
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    try:
        value, _ = decoder.raw_decode(doc, start)
    except json.JSONDecodeError as exc:
        raise ApiError(400, _go_syntax_error(doc, exc)) from None
    except ValueError:
        raise ApiError(400, "invalid character 'N' looking for beginning of value") from None
    return value


def _type_error(value: Any, path: str, gotype: str) -> ApiError:
    kind = json_type_name(value)
    if kind == "number" and gotype == "int" and isinstance(value, float):
        kind = f"number {value:g}"
    return ApiError(400, f"json: cannot unmarshal {kind} into Go struct field {path} of type {gotype}")


def _check(value: Any, kind: str, path: str) -> Any:
    """Check one decoded field against a Go type; ``kind`` is a small type language."""
    if value is None or kind == "any":
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise _type_error(value, path, "string")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(value, path, "bool")
    elif kind == "float64":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, path, "float64")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise _type_error(value, path, "int")
        return int(value)
    elif kind == "map":
        if not isinstance(value, dict):
            raise _type_error(value, path, "map[string]interface {}")
    elif kind == "duration":
        return parse_keep_alive(value)
    elif kind == "think":
        if isinstance(value, str) and value not in ("high", "medium", "low"):
            raise ApiError(
                400,
                f'invalid think value: {go_quote(value)} (must be "high", "medium", "low", true, or false)',
            )
        if not isinstance(value, (bool, str)):
            raise ApiError(400, 'think must be a boolean or string ("high", "medium", "low", true, or false)')
    elif kind == "[]image":
        if not isinstance(value, list):
            raise _type_error(value, path, "[]api.ImageData")
        for index, item in enumerate(value):
            _check_image(item, f"{path}.{index}")
    elif kind.startswith("[]"):
        inner = kind[2:]
        if not isinstance(value, list):
            raise _type_error(value, path, "[]" + _GO_ELEMENT_NAMES.get(inner, inner))
        return [_check(item, inner, path) for item in value]
    elif kind in STRUCTS:
        if not isinstance(value, dict):
            raise _type_error(value, path, "api." + kind)
        # api.Message decodes through an alias type of its own, which is what Go's errors then name
        return check_struct(value, kind, "Alias" if kind == "Message" else path)
    return value


_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def base64_error_at(text: str) -> int | None:
    """Where Go's ``base64.StdEncoding`` finds ``text`` corrupt (``illegal base64 data at input byte
    N``), or None when it decodes: a character outside the alphabet, padding too early or followed by
    data, or a last group of one to three characters without its padding."""
    for start in range(0, len(text), 4):
        group = text[start : start + 4]
        for offset, char in enumerate(group):
            if char == "=":
                if offset < 2:
                    return start + offset
                if len(group) < 4 or group[offset:] != "=" * (4 - offset):
                    return start + len(group) if len(group) < 4 else start + offset
                return start + 4 if start + 4 < len(text) else None
            if char not in _BASE64:
                return start + offset
    return len(text) - len(text) % 4 if len(text) % 4 else None


def _check_image(value: Any, path: str) -> None:
    """One ``api.ImageData``: a base64 string, decoded by its own unmarshaller (hence Go's shorter message)."""
    if not isinstance(value, str):
        raise ApiError(400, f"json: cannot unmarshal {json_type_name(value)} into {path} of type api.ImageData")
    at = base64_error_at(value)
    if at is not None:
        message = (
            f"json: cannot unmarshal string into {path} of type api.ImageData: illegal base64 data at input byte {at}"
        )
        raise ApiError(400, message)


_GO_ELEMENT_NAMES = {"Message": "api.Message", "Tool": "api.Tool", "ToolCall": "api.ToolCall"}

STRUCTS: dict[str, dict[str, str]] = {
    "Message": {
        "role": "string",
        "content": "string",
        "thinking": "string",
        "images": "[]image",
        "tool_calls": "[]ToolCall",
        "tool_name": "string",
    },
    "ToolCall": {"function": "map"},
    "Tool": {"type": "string", "function": "map"},
    "GenerateRequest": {
        "model": "string",
        "prompt": "string",
        "suffix": "string",
        "system": "string",
        "template": "string",
        "context": "[]int",
        "stream": "bool",
        "raw": "bool",
        "format": "any",
        "keep_alive": "duration",
        "images": "[]image",
        "options": "map",
        "think": "think",
        "truncate": "bool",
        "shift": "bool",
    },
    "ChatRequest": {
        "model": "string",
        "messages": "[]Message",
        "stream": "bool",
        "format": "any",
        "keep_alive": "duration",
        "tools": "[]Tool",
        "options": "map",
        "think": "think",
        "truncate": "bool",
        "shift": "bool",
    },
    "EmbedRequest": {
        "model": "string",
        "input": "any",
        "keep_alive": "duration",
        "truncate": "bool",
        "dimensions": "int",
        "options": "map",
    },
    "EmbeddingRequest": {"model": "string", "prompt": "string", "keep_alive": "duration", "options": "map"},
    "PullRequest": {"model": "string", "name": "string", "insecure": "bool", "stream": "bool"},
    "PushRequest": {"model": "string", "name": "string", "insecure": "bool", "stream": "bool"},
    "CreateRequest": {
        "model": "string",
        "name": "string",
        "stream": "bool",
        "quantize": "string",
        "from": "string",
        "files": "map",
        "adapters": "map",
        "template": "string",
        "license": "any",
        "system": "string",
        "parameters": "map",
        "messages": "[]Message",
    },
    "CopyRequest": {"source": "string", "destination": "string"},
    "DeleteRequest": {"model": "string", "name": "string"},
    "ShowRequest": {"model": "string", "name": "string", "system": "string", "verbose": "bool", "options": "map"},
    "ChatCompletionRequest": {
        "model": "string",
        "messages": "[]openai.Message",
        "stream": "bool",
        "stream_options": "map",
        "max_tokens": "int",
        "seed": "int",
        "stop": "any",
        "temperature": "float64",
        "frequency_penalty": "any",
        "presence_penalty": "any",
        "top_p": "any",
        "response_format": "map",
        "tools": "[]Tool",
        "reasoning": "map",
        "reasoning_effort": "string",
    },
    "CompletionRequest": {
        "model": "string",
        "prompt": "string",
        "max_tokens": "int",
        "seed": "int",
        "stop": "any",
        "stream": "bool",
        "stream_options": "map",
        "temperature": "any",
        "top_p": "any",
        "frequency_penalty": "any",
        "presence_penalty": "any",
        "suffix": "string",
    },
    "OpenAIEmbedRequest": {"model": "string", "input": "any", "dimensions": "int", "encoding_format": "string"},
}


_OPENAI_STRUCTS = frozenset({"ChatCompletionRequest", "CompletionRequest", "OpenAIEmbedRequest"})


def check_struct(obj: Any, struct: str, path: str = "") -> dict[str, Any]:
    """Type-check a decoded object as Go would unmarshal it into ``api.<struct>``.

    Keys match case-insensitively, unknown keys and ``null`` values are ignored, the first type
    mismatch becomes a 400 with Go's message.
    """
    shown = struct.removeprefix("OpenAI")
    if not isinstance(obj, dict):
        package = "openai" if struct in _OPENAI_STRUCTS else "api"
        raise ApiError(400, f"json: cannot unmarshal {json_type_name(obj)} into Go value of type {package}.{shown}")
    spec = STRUCTS[struct]
    lowered = {name.lower(): name for name in spec}
    prefix = path or shown
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = key if key in spec else lowered.get(key.lower())
        if name is None or value is None:
            continue
        out[name] = _check(value, spec[name], f"{prefix}.{name}")
    return out


def decode_request(body: bytes, struct: str) -> dict[str, Any]:
    return check_struct(decode_json(body), struct)
