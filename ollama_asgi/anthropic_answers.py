"""Render native ``/api/chat`` answers the way Ollama's ``/v1/messages`` renders them.

The same event sequence (``message_start``, one ``content_block_*`` run per thinking, text or
tool_use block, ``message_delta`` with the stop reason and usage, ``message_stop``), the same ids
and the same token estimate in ``message_start``, which Ollama makes from the request. A stream
that fails ends with Anthropic's ``error`` event, which the anthropic client raises.
"""

from __future__ import annotations

import random
import secrets
import string
from typing import Any

import orjson

from ollama_asgi.errors import stream_error_line

__all__ = ["MessagesStream", "estimate_input_tokens", "whole_message"]

_rng = random.Random()  # a private generator: the host's global random state is not ours to advance
_CALL_ID_CHARS = string.ascii_lowercase + string.digits


def _call_id() -> str:
    """A tool call id as Ollama makes one, for a call that came without (an older server)."""
    return "call_" + "".join(_rng.choice(_CALL_ID_CHARS) for _ in range(8))


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
