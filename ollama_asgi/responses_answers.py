"""Render native ``/api/chat`` answers the way Ollama's ``/v1/responses`` renders them.

The response object echoes the request's settings and holds its items (reasoning, function calls
or one message); a stream is the same event sequence (``response.created``,
``response.in_progress``, ``response.output_item.added``, the deltas, the ``.done`` events,
``response.completed``) with sequence numbers and the same ids. Stream events are written with
sorted keys, as Go writes the maps Ollama builds them from. A stream that fails ends with
``response.failed`` carrying the error, the Responses API's own terminal event.
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson

__all__ = ["ResponsesStream", "whole_response"]

_rng = random.Random()  # a private generator: the host's global random state is not ours to advance


def _number(value: object) -> object:
    """A sampling setting echoed back; absent is 1, written as Go writes 1.0."""
    return 1 if value is None else value


def _usage(final: dict[str, Any]) -> dict[str, Any]:
    prompt = int(final.get("prompt_eval_count") or 0)
    completion = int(final.get("eval_count") or 0)
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _calls(message: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            arguments = orjson.dumps(function.get("arguments") or {}).decode()
            out.append((str(call.get("id") or ""), str(function.get("name") or ""), arguments))
    return out


def _text_format(req: dict[str, Any]) -> dict[str, Any]:
    text = req.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return {"type": "text"}
    out: dict[str, Any] = {"type": fmt.get("type") or ""}
    for key in ("name", "schema", "strict"):
        if fmt.get(key) not in (None, ""):
            out[key] = fmt[key]
    return out


def _reasoning(req: dict[str, Any], *, nulls: bool) -> dict[str, Any] | None:
    reasoning = req.get("reasoning") if isinstance(req.get("reasoning"), dict) else {}
    assert reasoning is not None
    effort, summary = reasoning.get("effort") or None, reasoning.get("summary") or None
    if effort is None and summary is None:
        return None
    out = {"effort": effort, "summary": summary}
    return out if nulls else {k: v for k, v in out.items() if v is not None}


def _tools_echo(req: dict[str, Any]) -> list[dict[str, Any]]:
    tools = req.get("tools")
    if not isinstance(tools, list):
        return []
    return [
        {
            "type": t.get("type") or "",
            "name": t.get("name") or "",
            "description": t.get("description"),
            "strict": t.get("strict"),
            "parameters": t.get("parameters"),
        }
        for t in tools
        if isinstance(t, dict)
    ]


def _response(
    req: dict[str, Any],
    response_id: str,
    model: str,
    status: str,
    output: list[Any],
    usage: dict[str, Any] | None,
    *,
    created: int,
    completed: int | None,
    stream: bool,
) -> dict[str, Any]:
    """The response object, in the order of Ollama's ResponsesResponse, its settings echoed."""
    instructions = req.get("instructions") or None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "completed_at": completed,
        "status": status,
        "incomplete_details": None,
        "model": model,
        "previous_response_id": None,
        "instructions": instructions,
        "output": output,
        "error": None,
        "tools": _tools_echo(req),
        "tool_choice": "auto",
        "truncation": req.get("truncation") or "disabled",
        "parallel_tool_calls": True,
        "text": {"format": _text_format(req)},
        "top_p": _number(req.get("top_p")),
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": _number(req.get("temperature")),
        "reasoning": _reasoning(req, nulls=stream),
        "usage": usage,
        "max_output_tokens": req.get("max_output_tokens"),
        "max_tool_calls": None,
        "store": False,
        "background": bool(req.get("background")),
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def whole_response(model: str, request: dict[str, Any] | None, native: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed answer as Ollama's ``/v1/responses`` writes it."""
    req = request or {}
    response_id = f"resp_{_rng.randrange(999999)}"
    message = native.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("thinking"):
        summary = [{"type": "summary_text", "text": message["thinking"]}]
        output.append(
            {
                "id": f"rs_{response_id}",
                "type": "reasoning",
                "summary": summary,
                "encrypted_content": message["thinking"],
            }
        )
    calls = _calls(message)
    for index, (call_id, name, arguments) in enumerate(calls):
        output.append(
            {
                "id": f"fc_{response_id}_{index}",
                "type": "function_call",
                "status": "completed",
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
            }
        )
    if not calls:
        output.append(
            {
                "id": f"msg_{_rng.randrange(999999)}",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [_text_part(str(message.get("content") or ""))],
            }
        )
    now = int(time.time())
    return _response(
        req, response_id, model, "completed", output, _usage(native), created=now, completed=now, stream=False
    )


class ResponsesStream:
    """Native ``/api/chat`` chunks in, Responses API events out (in Ollama's order and numbering)."""

    def __init__(self, model: str, request: dict[str, Any] | None) -> None:
        self.req = request or {}
        self.model = model
        self.id = f"resp_{_rng.randrange(999999)}"
        self.item_id = f"msg_{_rng.randrange(999999)}"
        self.sequence = 0
        self.first = True
        self.output_index = 0
        self.text_started = False
        self.calls_sent = False
        self.text = ""
        self.reasoning_id = ""
        self.thinking = ""
        self.reasoning_done = False
        self.call_items: list[dict[str, Any]] = []

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data["type"] = kind
        data["sequence_number"] = self.sequence
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data, option=orjson.OPT_SORT_KEYS) + b"\n\n"

    def _response(self, status: str, output: list[Any], usage: dict[str, Any] | None) -> dict[str, Any]:
        return _response(
            self.req, self.id, self.model, status, output, usage, created=int(time.time()), completed=None, stream=True
        )

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = b""
        message = chunk.get("message") or {}
        if self.first:
            self.first = False
            out += self._event("response.created", {"response": self._response("in_progress", [], None)})
            out += self._event("response.in_progress", {"response": self._response("in_progress", [], None)})
        if message.get("thinking"):
            out += self._think(message["thinking"])
        calls = _calls(message)
        if calls:
            out += self._calls(calls)
            self.calls_sent = True
        elif not self.calls_sent and message.get("content"):
            out += self._text(message["content"])
        if chunk.get("done"):
            out += self._complete(chunk)
        return out

    def _think(self, thinking: str) -> bytes:
        out = b""
        if not self.reasoning_id:
            self.reasoning_id = f"rs_{_rng.randrange(999999)}"
            item = {"id": self.reasoning_id, "type": "reasoning", "summary": []}
            out += self._event("response.output_item.added", {"output_index": self.output_index, "item": item})
        self.thinking += thinking
        delta = {"item_id": self.reasoning_id, "output_index": self.output_index, "summary_index": 0, "delta": thinking}
        return out + self._event("response.reasoning_summary_text.delta", delta)

    def _reasoning_item(self) -> dict[str, Any]:
        summary = [{"type": "summary_text", "text": self.thinking}]
        return {"id": self.reasoning_id, "type": "reasoning", "summary": summary, "encrypted_content": self.thinking}

    def _end_reasoning(self) -> bytes:
        if not self.reasoning_id or self.reasoning_done:
            return b""
        self.reasoning_done = True
        index = self.output_index
        self.output_index += 1
        done = {"item_id": self.reasoning_id, "output_index": index, "summary_index": 0, "text": self.thinking}
        return self._event("response.reasoning_summary_text.done", done) + self._event(
            "response.output_item.done", {"output_index": index, "item": self._reasoning_item()}
        )

    def _calls(self, calls: list[tuple[str, str, str]]) -> bytes:
        # Ollama numbers each chunk's calls from the same output index and names them by a fresh
        # random number and their place in the chunk; rendered alike, so clients see what they see
        # from Ollama itself.
        out = self._end_reasoning()
        for offset, (call_id, name, arguments) in enumerate(calls):
            item_id = f"fc_{_rng.randrange(999999)}_{offset}"
            index = self.output_index + offset
            item = {"id": item_id, "type": "function_call", "status": "completed", "call_id": call_id}
            item.update(name=name, arguments=arguments)
            self.call_items.append(item)
            added = {**item, "status": "in_progress", "arguments": ""}
            out += self._event("response.output_item.added", {"output_index": index, "item": added})
            if arguments:
                delta = {"item_id": item_id, "output_index": index, "delta": arguments}
                out += self._event("response.function_call_arguments.delta", delta)
            done = {"item_id": item_id, "output_index": index, "arguments": arguments}
            out += self._event("response.function_call_arguments.done", done)
            out += self._event("response.output_item.done", {"output_index": index, "item": dict(item)})
        return out

    def _message_item(self, status: str) -> dict[str, Any]:
        content = [_text_part(self.text)] if status == "completed" else []
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def _text(self, text: str) -> bytes:
        out = self._end_reasoning()
        if not self.text_started:
            self.text_started = True
            added = {"output_index": self.output_index, "item": self._message_item("in_progress")}
            out += self._event("response.output_item.added", added)
            part = {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0}
            out += self._event("response.content_part.added", {**part, "part": _text_part("")})
        self.text += text
        delta = {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0}
        return out + self._event("response.output_text.delta", {**delta, "delta": text, "logprobs": []})

    def _output(self) -> list[dict[str, Any]]:
        output = [self._reasoning_item()] if self.reasoning_id else []
        if self.call_items:
            output.extend(self.call_items)
        elif self.text_started:
            output.append(self._message_item("completed"))
        return output

    def _complete(self, final: dict[str, Any]) -> bytes:
        out = self._end_reasoning()
        if not self.calls_sent and self.text_started:
            where = {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0}
            out += self._event("response.output_text.done", {**where, "text": self.text, "logprobs": []})
            out += self._event("response.content_part.done", {**where, "part": _text_part(self.text)})
            done = {"output_index": self.output_index, "item": self._message_item("completed")}
            out += self._event("response.output_item.done", done)
        response = self._response("completed", self._output(), _usage(final))
        response["completed_at"] = int(time.time())
        return out + self._event("response.completed", {"response": response})

    def fail(self, message: str) -> bytes:
        """The event that ends a stream Ollama broke off: ``response.failed`` with the error (Ollama
        itself just stops)."""
        out = b""
        if self.first:
            self.first = False
            out += self._event("response.created", {"response": self._response("in_progress", [], None)})
        response = self._response("failed", self._output(), None)
        response["error"] = {"code": "server_error", "message": message}
        return out + self._event("response.failed", {"response": response})
