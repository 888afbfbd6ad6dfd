"""Serve the OpenAI-compatible API from Ollama's native endpoints.

Ollama's own ``/v1`` layer cannot carry ``num_ctx`` or ``keep_alive``, so every ``/v1`` request
asks for the default context and a mix of ``/v1`` and native traffic reloads the model back and
forth; and when a ``/v1`` stream fails it ends without the error. The gateway therefore maps
``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` onto ``/api/chat``,
``/api/generate`` and ``/api/embed`` (where it can size the context) and renders the answers the
way Ollama's ``/v1`` does: ids, chunk order, a dedicated finish chunk, the ``include_usage``
chunk, tool-call arguments as JSON strings, and OpenAI-shaped errors, mid-stream ones included.
"""

from __future__ import annotations

import base64
import random
import secrets
import struct
import time
from typing import Any

import orjson

from ollama_asgi.errors import GatewayError

__all__ = ["ChatStream", "CompletionStream", "embeddings_response", "to_native", "whole_response"]
_rng = random.Random()  # a private generator: the host's global random state is not ours to advance


def _options(req: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    stop = req.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        if not all(isinstance(s, str) for s in stop):
            raise GatewayError(400, "stop must be a string or an array of strings")
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
    if not isinstance(raw, list) or not raw:
        raise GatewayError(400, "[] is too short - 'messages'")
    out = []
    for message in raw:
        if not isinstance(message, dict):
            raise GatewayError(400, "each message must be an object")
        native: dict[str, Any] = {"role": message.get("role", "user")}
        content = message.get("content")
        images: list[str] = []
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict):
                    raise GatewayError(400, "invalid message content part")
                if part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str) or "base64," not in url:
                        raise GatewayError(400, "invalid image input: only base64 data URLs are supported")
                    images.append(url.split("base64,", 1)[1])
            native["content"] = "\n".join(texts)
        elif content is None or isinstance(content, str):
            native["content"] = content or ""
        else:
            raise GatewayError(400, "message content must be a string or an array of parts")
        if images:
            native["images"] = images
        reasoning = message.get("reasoning")
        if isinstance(reasoning, str):
            native["thinking"] = reasoning
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            native["tool_calls"] = [_native_call(c) for c in calls]
        for key in ("name", "tool_call_id"):
            if isinstance(message.get(key), str):
                native["tool_name" if key == "name" else key] = message[key]
        out.append(native)
    return out


def _native_call(call: object) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise GatewayError(400, "invalid tool call")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise GatewayError(400, "tool call arguments must be a JSON object") from None
    return {"function": {"name": function.get("name", ""), "arguments": parsed}}


def to_native(route: str, req: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """The native path and body for a ``/v1`` request, and whether usage must be streamed."""
    stream = bool(req.get("stream"))
    options_stream = req.get("stream_options")
    include_usage = bool(stream and isinstance(options_stream, dict) and options_stream.get("include_usage"))
    if route == "openai_embeddings":
        embed_input = req.get("input")
        if not isinstance(embed_input, str | list):
            raise GatewayError(400, "invalid input type")
        fmt = req.get("encoding_format")
        if fmt not in (None, "float", "base64"):
            raise GatewayError(400, f"invalid encoding format: {fmt}")
        body: dict[str, Any] = {"model": req["model"], "input": embed_input}
        if req.get("dimensions") is not None:
            body["dimensions"] = req["dimensions"]
        return "/api/embed", body, False
    body = {"model": req["model"], "stream": stream, "options": _options(req)}
    fmt = _format(req)
    if fmt is not None:
        body["format"] = fmt
    if route == "openai_chat":
        body["messages"] = _messages(req.get("messages"))
        if isinstance(req.get("tools"), list):
            body["tools"] = req["tools"]
        effort = req.get("reasoning_effort")
        reasoning = req.get("reasoning")
        if isinstance(reasoning, dict):
            effort = reasoning.get("effort", effort)
        if effort is not None:
            body["think"] = effort if effort in ("high", "medium", "low") else effort != "none"
        return "/api/chat", body, include_usage
    prompt = req.get("prompt", "")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise GatewayError(400, "invalid type for 'prompt' field: only a single string is supported")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise GatewayError(400, "invalid type for 'prompt' field")
    body["prompt"] = prompt
    if isinstance(req.get("suffix"), str):
        body["suffix"] = req["suffix"]
    return "/api/generate", body, include_usage


def _tool_calls(calls: object) -> list[dict[str, Any]]:
    out = []
    if isinstance(calls, list):
        for index, call in enumerate(calls):
            function = call.get("function", {}) if isinstance(call, dict) else {}
            out.append(
                {
                    "id": f"call_{secrets.token_hex(4)}",
                    "index": index,
                    "type": "function",
                    "function": {
                        "name": function.get("name", ""),
                        "arguments": orjson.dumps(function.get("arguments", {})).decode(),
                    },
                }
            )
    return out


def _usage(final: dict[str, Any]) -> dict[str, int]:
    prompt = int(final.get("prompt_eval_count") or 0)
    completion = int(final.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(final: dict[str, Any], had_tools: bool) -> str:
    if had_tools:
        return "tool_calls"
    return "length" if final.get("done_reason") == "length" else "stop"


def _event(value: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


DONE = b"data: [DONE]\n\n"


class ChatStream:
    """Native ``/api/chat`` chunks in, ``chat.completion.chunk`` events out."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.head = {
            "id": f"chatcmpl-{_rng.randrange(999)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_ollama",
        }
        self.first = True
        self.had_tools = False

    def feed(self, chunk: dict[str, Any]) -> bytes:
        message = chunk.get("message") or {}
        done = bool(chunk.get("done"))
        delta: dict[str, Any] = {}
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("thinking"):
            delta["reasoning"] = message["thinking"]
        if message.get("tool_calls"):
            delta["tool_calls"] = _tool_calls(message["tool_calls"])
            self.had_tools = True
        out = b""
        if delta or not done or self.first:
            if self.first:
                delta = {"role": "assistant", **delta}
            if not ({"content", "reasoning", "tool_calls"} & delta.keys()):
                delta["content"] = ""
            out += _event({**self.head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            self.first = False
        if done:
            finish = {"index": 0, "delta": {}, "finish_reason": _finish_reason(chunk, self.had_tools)}
            out += _event({**self.head, "choices": [finish]})
            if self.include_usage:
                out += _event({**self.head, "choices": [], "usage": _usage(chunk)})
            out += DONE
        return out


class CompletionStream:
    """Native ``/api/generate`` chunks in, ``text_completion`` events out."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.head = {
            "id": f"cmpl-{_rng.randrange(999)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_ollama",
        }

    def feed(self, chunk: dict[str, Any]) -> bytes:
        done = bool(chunk.get("done"))
        reason = _finish_reason(chunk, False) if done else None
        out = _event(
            {**self.head, "choices": [{"text": chunk.get("response", ""), "index": 0, "finish_reason": reason}]}
        )
        if done:
            if self.include_usage:
                out += _event({**self.head, "choices": [], "usage": _usage(chunk)})
            out += DONE
        return out


def whole_response(route: str, model: str, native: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed chat or completion answer in OpenAI's shape."""
    created = int(time.time())
    if route == "openai_chat":
        message = native.get("message") or {}
        calls = _tool_calls(message.get("tool_calls"))
        out_message: dict[str, Any] = {"role": "assistant", "content": message.get("content", "")}
        if message.get("thinking"):
            out_message["reasoning"] = message["thinking"]
        if calls:
            out_message["tool_calls"] = calls
        return {
            "id": f"chatcmpl-{_rng.randrange(999)}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "message": out_message, "finish_reason": _finish_reason(native, bool(calls))}],
            "usage": _usage(native),
        }
    return {
        "id": f"cmpl-{_rng.randrange(999)}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [{"text": native.get("response", ""), "index": 0, "finish_reason": _finish_reason(native, False)}],
        "usage": _usage(native),
    }


def embeddings_response(model: str, native: dict[str, Any], encoding: str | None) -> dict[str, Any]:
    data = []
    for index, vector in enumerate(native.get("embeddings") or []):
        value: Any = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": value, "index": index})
    tokens = int(native.get("prompt_eval_count") or 0)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
