"""Serve OpenAI's Responses API (``/v1/responses``, what Codex speaks) from ``/api/chat``.

As for ``/v1/messages``: through Ollama's own ``/v1/responses`` the gateway could size no context
and own no ``keep_alive``, so the request is translated into a native chat request and the answer
rendered the way Ollama's ``/v1/responses`` renders it: the response object echoing the request's
settings, its items (reasoning, function calls or one message), the event sequence
(``response.created``, ``response.in_progress``, ``response.output_item.added``, the deltas, the
``.done`` events, ``response.completed``) with sequence numbers and the same ids. Stream events are
written with sorted keys, as Go writes the maps Ollama builds them from. A stream that fails ends
with ``response.failed`` carrying the error, the Responses API's own terminal event.
"""

from __future__ import annotations

import base64
import binascii
import random
import time
from typing import Any

import orjson

from ollama_asgi.errors import GatewayError

__all__ = ["ResponsesStream", "to_native", "whole_response"]

_rng = random.Random()  # a private generator: the host's global random state is not ours to advance
_IMAGE_PREFIXES = ("data:;base64,", *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")))
_EFFORTS = ("low", "medium", "high", "max")


def _bad(message: str) -> GatewayError:
    return GatewayError(400, message)


# -- request ------------------------------------------------------------------------------------


def _image(url: object) -> str:
    if not isinstance(url, str):
        raise _bad("invalid image input")
    if url.startswith(("http://", "https://")):
        raise _bad("image URLs are not currently supported, please use base64 encoded data instead")
    for prefix in _IMAGE_PREFIXES:
        if url.startswith(prefix):
            data = url[len(prefix) :]
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                break
            return data
    raise _bad("invalid image input")


def _content(content: object, where: str) -> tuple[str, list[str]]:
    """Text and images of a message's content (a string or an array of content parts)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _bad(f"{where}: content must be a string or array")
    text: list[str] = []
    images: list[str] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict) or kind not in ("input_text", "output_text", "input_image", "input_file"):
            raise _bad(f"{where}: content[{index}]: unknown content type: {kind or ''}")
        if kind in ("input_text", "output_text"):
            text.append(str(part.get("text") or ""))
        elif kind == "input_image":
            if part.get("image_url"):
                images.append(_image(part["image_url"]))
        else:
            raise _bad("file inputs are not currently supported")
    return "".join(text), images


def _arguments(raw: object) -> Any:
    if raw in (None, ""):
        return {}
    if not isinstance(raw, str):
        raise _bad("failed to parse function call arguments: arguments must be a JSON string")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"failed to parse function call arguments: {exc}") from None


def _messages(req: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = req.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = req.get("input")
    if isinstance(items, str):
        if items:
            messages.append({"role": "user", "content": items})
        return messages
    if items is None:
        return messages
    if not isinstance(items, list):
        raise _bad("input must be a string or array")
    thinking = ""  # a reasoning item goes with the assistant turn after it
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise _bad(f"{where}: input item must be an object")
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "message":
            text, images = _content(item.get("content"), where)
            message: dict[str, Any] = {"role": item.get("role") or "", "content": text}
            if images:
                message["images"] = images
            if message["role"] == "assistant" and thinking:
                message["thinking"], thinking = thinking, ""
            messages.append(message)
        elif kind == "function_call":
            call = {"function": {"name": item.get("name") or "", "arguments": _arguments(item.get("arguments"))}}
            if item.get("call_id"):
                call = {"id": item["call_id"], **call}
            if messages and messages[-1]["role"] == "assistant":
                last = messages[-1]
                last.setdefault("tool_calls", []).append(call)
            else:
                last = {"role": "assistant", "content": "", "tool_calls": [call]}
                messages.append(last)
            if thinking:
                last["thinking"], thinking = thinking, ""
        elif kind == "function_call_output":
            output, images = _content(item.get("output"), where)
            message = {"role": "tool", "content": output}
            if images:
                message["images"] = images
            if item.get("call_id"):
                message["tool_call_id"] = item["call_id"]
            messages.append(message)
        elif kind == "reasoning":
            thinking = str(item.get("encrypted_content") or "")
        elif not kind:
            raise _bad(f"{where}: input item missing required 'type' field")
        else:
            raise _bad(f'{where}: unknown input item type: "{kind}"')
    if thinking:
        messages.append({"role": "assistant", "content": "", "thinking": thinking})
    return messages


def _tools(tools: object) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("tools must be an array")
    out = []
    for tool in tools:
        if not isinstance(tool, dict):
            raise _bad("each tool must be an object")
        function = {"name": tool.get("name") or "", "description": tool.get("description") or ""}
        function["parameters"] = tool.get("parameters") or {}
        out.append({"type": tool.get("type") or "", "function": function})
    return out


def to_native(req: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """The ``/api/chat`` body for a Responses request (checked as Ollama checks it, in its words)."""
    options: dict[str, Any] = {"temperature": req["temperature"] if req.get("temperature") is not None else 1.0}
    if req.get("top_p") is not None:
        options["top_p"] = req["top_p"]  # Ollama leaves the model's own default otherwise
    limit = req.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise _bad("max_output_tokens must be an integer")
        options["num_predict"] = limit
    body: dict[str, Any] = {"model": req["model"], "messages": _messages(req), "options": options}
    body["stream"] = bool(req.get("stream"))
    tools = _tools(req.get("tools"))
    if tools:
        body["tools"] = tools
    reasoning = req.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if effort:
        if effort == "none":
            body["think"] = False
        elif effort in _EFFORTS:
            body["think"] = effort
        else:
            raise _bad(f'invalid reasoning value: "{effort}" (must be "high", "medium", "low", "max", or "none")')
    text = req.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and fmt.get("schema") is not None:
        body["format"] = fmt["schema"]
    return "/api/chat", body, False


# -- answers --------------------------------------------------------------------------------------


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
