"""Render native answers the way Ollama's ``/v1`` renders them, for the OpenAI-compatible API.

``openai_compat`` sends a ``/v1`` request to ``/api/chat``, ``/api/generate`` or ``/api/embed``;
what comes back is written here as Ollama's own ``/v1`` would write it: ids, chunk order, a
dedicated finish chunk, the ``include_usage`` chunk, tool calls with Ollama's own ids and running
index and their arguments as JSON strings, and logprobs. ``openai_relay`` feeds the chunks in and
writes OpenAI-shaped errors, mid-stream ones included.
"""

from __future__ import annotations

import base64
import random
import secrets
import struct
import time
from typing import Any

import orjson

__all__ = ["ChatStream", "CompletionStream", "embeddings_response", "whole_response"]

_rng = random.Random()  # a private generator: the host's global random state is not ours to advance


def _tool_calls(calls: object, first: int) -> list[dict[str, Any]]:
    """Native calls in OpenAI's shape, with Ollama's own id and running ``function.index``.

    Ollama streams one call per chunk, so the index cannot be the place in the chunk: clients merge
    deltas of one index into one call. An Ollama too old to number or name its calls gets the
    count so far (``first`` on) and an id made here.
    """
    out = []
    if isinstance(calls, list):
        for place, call in enumerate(calls, first):
            function = call.get("function", {}) if isinstance(call, dict) else {}
            call_id = call.get("id") if isinstance(call, dict) else None
            index = function.get("index")
            out.append(
                {
                    "id": call_id if isinstance(call_id, str) and call_id else f"call_{secrets.token_hex(4)}",
                    "index": index if isinstance(index, int) else place,
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
    """Ollama's own done reason (``load`` for a completion without a prompt), or the calls'."""
    if had_tools:
        return "tool_calls"
    return str(final.get("done_reason") or "stop")


def _event(value: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


DONE = b"data: [DONE]\n\n"
_NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


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
        self.calls = 0

    def feed(self, chunk: dict[str, Any]) -> bytes:
        message = chunk.get("message") or {}
        done = bool(chunk.get("done"))
        logprobs = chunk.get("logprobs")
        content = message.get("content") or ""
        thinking = message.get("thinking")
        calls = message.get("tool_calls")
        out = b""
        if content or thinking or calls or logprobs or not done or self.first:
            delta: dict[str, Any] = {"role": "assistant"} if self.first else {}
            self.first = False
            if thinking and (content or calls):
                # Ollama splits such a chunk: the reasoning (with the logprobs) first, then the rest.
                out += self._event({**delta, "reasoning": thinking}, logprobs)
                delta, thinking, logprobs = {}, None, None
            delta["content"] = content  # Ollama keeps an empty content beside reasoning and calls
            if thinking:
                delta["reasoning"] = thinking
            if calls:
                rendered = _tool_calls(calls, self.calls)
                self.calls += len(rendered)
                delta["tool_calls"] = rendered
            out += self._event(delta, logprobs)
        if done:
            finish = {"index": 0, "delta": {}, "finish_reason": _finish_reason(chunk, self.calls > 0)}
            out += _event({**self.head, "choices": [finish]})
            if self.include_usage:
                out += _event({**self.head, "choices": [], "usage": _usage(chunk)})
            out += DONE
        return out

    def _event(self, delta: dict[str, Any], logprobs: object) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        if logprobs:
            choice["logprobs"] = {"content": logprobs}
        return _event({**self.head, "choices": [choice]})


class CompletionStream:
    """Native ``/api/generate`` chunks in, ``text_completion`` events out."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.head = {"id": f"cmpl-{_rng.randrange(999)}", "object": "text_completion", "created": int(time.time())}
        # Ollama's completion chunk has its choices before the model, and with include_usage a
        # zeroed usage on every chunk before the one that counts.
        self.tail: dict[str, Any] = {"model": model, "system_fingerprint": "fp_ollama"}
        if include_usage:
            self.tail["usage"] = _NO_USAGE

    def feed(self, chunk: dict[str, Any]) -> bytes:
        done = bool(chunk.get("done"))
        reason = _finish_reason(chunk, False) if done else None
        choice = {"text": chunk.get("response", ""), "index": 0, "finish_reason": reason}
        out = _event({**self.head, "choices": [choice], **self.tail})
        if done:
            if self.include_usage:
                out += _event({**self.head, "choices": [], **self.tail, "usage": _usage(chunk)})
            out += DONE
        return out


def whole_response(route: str, model: str, native: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed chat or completion answer in OpenAI's shape."""
    created = int(time.time())
    if route == "openai_chat":
        message = native.get("message") or {}
        calls = _tool_calls(message.get("tool_calls"), 0)
        out_message: dict[str, Any] = {"role": "assistant", "content": message.get("content", "")}
        if message.get("thinking"):
            out_message["reasoning"] = message["thinking"]
        if calls:
            out_message["tool_calls"] = calls
        choice = {"index": 0, "message": out_message, "finish_reason": _finish_reason(native, bool(calls))}
        if native.get("logprobs"):
            choice["logprobs"] = {"content": native["logprobs"]}
        return {
            "id": f"chatcmpl-{_rng.randrange(999)}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [choice],
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
        if encoding is not None and encoding.lower() == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": value, "index": index})
    tokens = int(native.get("prompt_eval_count") or 0)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
