"""Serve OpenAI's Responses API (``/v1/responses``, what Codex speaks) from ``/api/chat``: the requests.

As for ``/v1/messages``: through Ollama's own ``/v1/responses`` the gateway could size no context
and own no ``keep_alive``, so the request is translated here into a native chat request, checked
as Ollama checks it and refused in its words. The answer is rendered back in
``responses_answers``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from ollama_asgi.errors import GatewayError

__all__ = ["to_native"]

_IMAGE_PREFIXES = ("data:;base64,", *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")))
_EFFORTS = ("low", "medium", "high", "max")


def _bad(message: str) -> GatewayError:
    return GatewayError(400, message)


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
