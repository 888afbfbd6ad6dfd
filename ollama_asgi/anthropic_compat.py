"""Serve Anthropic's Messages API (``/v1/messages``, what Claude Code speaks) from ``/api/chat``.

Ollama serves ``/v1/messages`` itself (since 0.14), but through its own layer the gateway could
not size ``num_ctx`` or own ``keep_alive``, and a stream that breaks ends without a word. So the
request is translated here into a native chat request, and the native stream rendered back the
way Ollama's ``/v1/messages`` renders it: the same event sequence (``message_start``, one
``content_block_*`` run per thinking, text or tool_use block, ``message_delta`` with the stop
reason and usage, ``message_stop``), the same ids and the same token estimate in
``message_start``. A stream that fails ends with Anthropic's ``error`` event, which the anthropic
client raises.
"""

from __future__ import annotations

import base64
import binascii
import random
import secrets
import string
from typing import Any

import orjson

from ollama_asgi.errors import GatewayError, stream_error_line

__all__ = ["MessagesStream", "estimate_input_tokens", "to_native", "whole_message"]

_rng = random.Random()  # a private generator: the host's global random state is not ours to advance
_CALL_ID_CHARS = string.ascii_lowercase + string.digits


def _bad(message: str) -> GatewayError:
    return GatewayError(400, message)


def _call_id() -> str:
    """A tool call id as Ollama makes one, for a call that came without (an older server)."""
    return "call_" + "".join(_rng.choice(_CALL_ID_CHARS) for _ in range(8))


# -- request ------------------------------------------------------------------------------------


def _system(system: object) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "".join(
            block["text"]
            for block in system
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        )
    return ""


def _image(source: object) -> str:
    """The base64 data of an image block; Ollama takes only base64 images."""
    if not isinstance(source, dict):
        raise _bad("invalid image source")
    if source.get("type") != "base64":
        raise _bad(f"invalid image source type: {source.get('type') or ''}. Only base64 images are supported.")
    data = source.get("data") or ""
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise _bad("invalid base64 image data") from None
    return str(data)


def _tool_result(content: object) -> tuple[str, list[str]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    texts: list[str] = []
    images: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "image":
            if not isinstance(block.get("source"), dict):
                raise _bad("invalid tool_result image source")
            images.append(_image(block["source"]))
    return "".join(texts), images


def _search_result(content: object) -> str:
    """A web search result passed back, as text for the model (Ollama's wording)."""
    if isinstance(content, str):
        return content
    items = content if isinstance(content, list) else [content]
    lines = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "web_search_tool_result_error":
            code = item.get("error_code") or ""
            return f"web_search_tool_result_error: {code}" if code else "web_search_tool_result_error"
        if item.get("type") == "web_search_result":
            lines.append(f"- {item.get('title', '')}: {item.get('url', '')}\n")
    return "".join(lines)


def _message(message: object) -> list[dict[str, Any]]:
    """One Anthropic message as native messages: tool results become ``tool`` messages of their own."""
    if not isinstance(message, dict):
        raise _bad("each message must be an object")
    role = str(message.get("role") or "").lower()
    content = message.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if blocks is None:
        blocks = []
    if not isinstance(blocks, list):
        raise _bad("message content must be a string or an array of content blocks")
    text: list[str] = []
    images: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    thinking = ""
    for block in blocks:
        if not isinstance(block, dict):
            raise _bad("each content block must be an object")
        kind = block.get("type")
        if kind == "text":
            if isinstance(block.get("text"), str):
                text.append(block["text"])
        elif kind == "image":
            images.append(_image(block.get("source")))
        elif kind in ("tool_use", "server_tool_use"):
            if kind == "tool_use" and not block.get("id"):
                raise _bad("tool_use block missing required 'id' field")
            if kind == "tool_use" and not block.get("name"):
                raise _bad("tool_use block missing required 'name' field")
            arguments = block.get("input")
            call: dict[str, Any] = {"function": {"name": block.get("name") or "", "arguments": arguments or {}}}
            if block.get("id"):
                call["id"] = block["id"]
            calls.append(call)
        elif kind == "tool_result":
            result, result_images = _tool_result(block.get("content"))
            native: dict[str, Any] = {"role": "tool", "content": result}
            if result_images:
                native["images"] = result_images
            if block.get("tool_use_id"):
                native["tool_call_id"] = block["tool_use_id"]
            results.append(native)
        elif kind == "web_search_tool_result":
            native = {"role": "tool", "content": _search_result(block.get("content"))}
            if block.get("tool_use_id"):
                native["tool_call_id"] = block["tool_use_id"]
            results.append(native)
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking = block["thinking"]
    out: list[dict[str, Any]] = []
    if role == "user":  # a user turn answers the calls before it: its results come first
        out.extend(results)
    if text or images or calls or thinking:
        native = {"role": role, "content": "".join(text)}
        if images:
            native["images"] = images
        if calls:
            native["tool_calls"] = calls
        if thinking:
            native["thinking"] = thinking
        out.append(native)
    if role != "user":
        out.extend(results)
    return out


def _tools(tools: object) -> list[dict[str, Any]]:
    """Custom tools as native function tools. Anthropic's server tools (web search) are left out:
    the gateway runs no searches."""
    if not isinstance(tools, list):
        return []
    out = []
    for tool in tools:
        if not isinstance(tool, dict):
            raise _bad("each tool must be an object")
        if str(tool.get("type") or "").startswith("web_search"):
            continue
        schema = tool.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise _bad(f"invalid input_schema for tool {tool.get('name', '')!r}")
        function: dict[str, Any] = {"name": tool.get("name") or "", "description": tool.get("description") or ""}
        function["parameters"] = schema or {}
        out.append({"type": "function", "function": function})
    return out


def _think(req: dict[str, Any]) -> bool | str | None:
    thinking = req.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        return True
    if kind == "disabled":
        return False
    config = req.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if isinstance(effort, str):
        effort = effort.strip().lower()
        effort = "high" if effort == "xhigh" else effort
        if effort in ("high", "medium", "low", "max"):
            return effort
    return None


def to_native(req: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """The ``/api/chat`` body for a Messages request (checked as Ollama checks it, in its words)."""
    max_tokens = req.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        raise _bad("max_tokens is required and must be positive")
    raw_messages = req.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("messages is required")
    messages: list[dict[str, Any]] = []
    system = _system(req.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in raw_messages:
        messages.extend(_message(message))
    options: dict[str, Any] = {"num_predict": max_tokens}
    for key in ("temperature", "top_p", "top_k"):
        if req.get(key) is not None:
            options[key] = req[key]
    stop = req.get("stop_sequences")
    if stop:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop_sequences must be an array of strings")
        options["stop"] = stop
    body: dict[str, Any] = {"model": req["model"], "messages": messages, "options": options}
    body["stream"] = bool(req.get("stream"))
    tools = _tools(req.get("tools"))
    if tools:
        body["tools"] = tools
    think = _think(req)
    if think is not None:
        body["think"] = think
    return "/api/chat", body, False


# -- the token estimate of message_start ----------------------------------------------------------


def _go_json(value: object) -> bytes:
    """JSON as Go's encoding/json writes it: maps in key order, ``<``, ``>`` and ``&`` escaped."""
    out = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return out.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")


def _block_length(block: object) -> int:
    """What Ollama counts of a content block: its text and thinking, and tool blocks as JSON."""
    if not isinstance(block, dict):
        return 0
    total = 0
    for key in ("text", "thinking"):
        if isinstance(block.get(key), str):
            total += len(block[key].encode())
    if block.get("type") in ("tool_use", "tool_result"):
        # The fields of Ollama's ContentBlock, in its order, empty ones left out.
        fields: dict[str, Any] = {"type": block["type"]}
        for key in ("text", "citations", "source", "id", "name", "input", "tool_use_id", "content", "is_error"):
            if block.get(key):
                fields[key] = block[key]
        if isinstance(block.get("thinking"), str):
            fields["thinking"] = block["thinking"]
        if block.get("signature"):
            fields["signature"] = block["signature"]
        parts = [b'"' + key.encode() + b'":' + _go_json(value) for key, value in fields.items()]
        total += len(b"{" + b",".join(parts) + b"}")
    return total


def _content_length(content: object) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        return sum(_block_length(block) for block in content)
    return len(_go_json(content))


def estimate_input_tokens(req: dict[str, Any]) -> int:
    """Ollama's estimate of the prompt's tokens (a quarter of its bytes), which its ``message_start``
    carries: the true count comes only with the final chunk."""
    total = _content_length(req.get("system"))
    messages = req.get("messages")
    messages = messages if isinstance(messages, list) else []
    for message in messages:
        if isinstance(message, dict):
            total += len(str(message.get("role") or "").encode()) + _content_length(message.get("content"))
    tools = req.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict):
            total += len(str(tool.get("name") or "").encode()) + len(str(tool.get("description") or "").encode())
            if tool.get("input_schema") is not None:
                total += len(orjson.dumps(tool["input_schema"]))
    tokens = total // 4
    if tokens == 0 and (messages or req.get("system") is not None):
        tokens = 1
    return tokens


# -- answers --------------------------------------------------------------------------------------


def message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def _stop_reason(done_reason: object, had_tools: bool) -> str:
    if had_tools:
        return "tool_use"
    if done_reason == "stop":
        return "end_turn"
    if done_reason == "length":
        return "max_tokens"
    return "stop_sequence" if done_reason else ""


def _usage(final: dict[str, Any]) -> dict[str, int]:
    return {
        "input_tokens": int(final.get("prompt_eval_count") or 0),
        "output_tokens": int(final.get("eval_count") or 0),
    }


def _calls(message: dict[str, Any]) -> list[tuple[str, str, Any]]:
    out = []
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        call_id = call.get("id") or _call_id()
        arguments = function.get("arguments")
        out.append((str(call_id), str(function.get("name") or ""), arguments if arguments is not None else {}))
    return out


def whole_message(model: str, native: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed answer as Ollama's ``/v1/messages`` writes it (``content`` null when empty)."""
    message = native.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("thinking"):
        content.append({"type": "thinking", "thinking": message["thinking"]})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    calls = _calls(message)
    for call_id, name, arguments in calls:
        content.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
    answer: dict[str, Any] = {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": native.get("model") or model,
        "content": content or None,
    }
    stop = _stop_reason(native.get("done_reason"), bool(calls))
    if stop:
        answer["stop_reason"] = stop
    answer["usage"] = _usage(native)
    return answer


def _event(name: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return _event(b"content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def _block_stop(index: int) -> bytes:
    return _event(b"content_block_stop", {"type": "content_block_stop", "index": index})


class MessagesStream:
    """Native ``/api/chat`` chunks in, Anthropic's streaming events out (in Ollama's order)."""

    def __init__(self, model: str, request: dict[str, Any] | None) -> None:
        self.id = message_id()
        self.model = model
        self.estimate = estimate_input_tokens(request or {})
        self.first = True
        self.index = 0
        self.thinking_started = self.thinking_done = self.text_started = False
        self.calls_sent: set[str] = set()

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = b""
        message = chunk.get("message") or {}
        if self.first:
            self.first = False
            tokens = int(chunk.get("prompt_eval_count") or 0) or self.estimate
            start = {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "usage": {"input_tokens": tokens, "output_tokens": 0},
            }
            out += _event(b"message_start", {"type": "message_start", "message": start})
        thinking = message.get("thinking")
        if thinking and not self.thinking_done:
            if not self.thinking_started:
                self.thinking_started = True
                out += _block_start(self.index, {"type": "thinking", "thinking": ""})
            delta = {"type": "thinking_delta", "thinking": thinking}
            out += _event(b"content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})
        text = message.get("content")
        if text:
            out += self._end_thinking()
            if not self.text_started:
                self.text_started = True
                out += _block_start(self.index, {"type": "text", "text": ""})
            delta = {"type": "text_delta", "text": text}
            out += _event(b"content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})
        for call_id, name, arguments in _calls(message):
            if call_id in self.calls_sent:
                continue
            out += self._end_thinking()
            if self.text_started:
                out += _block_stop(self.index)
                self.index += 1
                self.text_started = False
            out += _block_start(self.index, {"type": "tool_use", "id": call_id, "name": name, "input": {}})
            delta = {"type": "input_json_delta", "partial_json": orjson.dumps(arguments).decode()}
            out += _event(b"content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})
            out += _block_stop(self.index)
            self.calls_sent.add(call_id)
            self.index += 1
        if chunk.get("done"):
            if self.text_started or (self.thinking_started and not self.thinking_done):
                out += _block_stop(self.index)
            stop = _stop_reason(chunk.get("done_reason"), bool(self.calls_sent))
            delta_event = {"type": "message_delta", "delta": {"stop_reason": stop} if stop else {}}
            delta_event["usage"] = _usage(chunk)
            out += _event(b"message_delta", delta_event)
            out += _event(b"message_stop", {"type": "message_stop"})
        return out

    def _end_thinking(self) -> bytes:
        if not self.thinking_started or self.thinking_done:
            return b""
        self.thinking_done = True
        self.index += 1
        return _block_stop(self.index - 1)

    def fail(self, message: str) -> bytes:
        """The event that ends a stream Ollama broke off: Anthropic's ``error``, raised by its client."""
        return stream_error_line(message, sse=True, anthropic=True)
