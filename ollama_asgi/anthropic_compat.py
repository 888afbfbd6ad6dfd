"""Serve Anthropic's Messages API (``/v1/messages``, what Claude Code speaks) from ``/api/chat``: the requests.

Ollama serves ``/v1/messages`` itself (since 0.14), but through its own layer the gateway could
not size ``num_ctx`` or own ``keep_alive``, and a stream that breaks ends without a word. So the
request is translated here into a native chat request, checked as Ollama checks it and refused in
its words. The answer is rendered back in ``anthropic_answers``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ollama_asgi.errors import GatewayError

__all__ = ["to_native"]


def _bad(message: str) -> GatewayError:
    return GatewayError(400, message)


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
