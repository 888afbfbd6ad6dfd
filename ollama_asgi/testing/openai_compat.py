"""The OpenAI-compatible /v1 layer: request rewriting onto the native handlers, and their output."""

from __future__ import annotations

import base64
import contextlib
import random
import struct
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from ollama_asgi.testing.generation import Run
from ollama_asgi.testing.gojson import check_struct, decode_json
from ollama_asgi.testing.handler import EmulatorState
from ollama_asgi.testing.management import show_body
from ollama_asgi.testing.native import collect, prepare_chat, prepare_generate, run_embed
from ollama_asgi.testing.responses import JSON_PLAIN, SSE, Exchange
from ollama_asgi.testing.wire import ApiError, EmptyBody, go_type_name

__all__ = ["MiddlewareError", "chat_completions", "completions", "embeddings", "error_body", "model", "models"]

_rng = random.Random()  # a private generator: tests that seed or watch the global one stay unaffected


class MiddlewareError(ApiError):
    """An error raised by Ollama's /v1 middleware itself (gin ``AbortWithStatusJSON``)."""


def error_body(status: int, message: str) -> bytes:
    """``openai.NewError``: the type follows the status."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


def _decode(ex: Exchange, struct_name: str) -> dict[str, Any]:
    try:
        return check_struct(decode_json(ex.body), struct_name)
    except EmptyBody:
        raise MiddlewareError(400, "EOF") from None
    except ApiError as exc:
        raise MiddlewareError(exc.status, exc.message) from None


def _encode(value: Any) -> bytes:
    """``json.NewEncoder(w).Encode``: compact JSON and a newline."""
    return orjson.dumps(value) + b"\n"


def _event(value: Any) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


def _stop(value: Any, strict: bool) -> list[str] | None:
    """``stop`` as a list: /v1/completions refuses a non-string item, /v1/chat/completions drops it."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        for item in value:
            if strict and not isinstance(item, str):
                raise MiddlewareError(400, f"invalid type for 'stop' field: {go_type_name(item)}")
        return [item for item in value if isinstance(item, str)]
    return None


def _options(req: dict[str, Any], strict_stop: bool) -> dict[str, Any]:
    """Sampling options; temperature and top_p default to 1.0, and num_ctx can never be set."""
    options: dict[str, Any] = {}
    stop = _stop(req.get("stop"), strict_stop)
    if stop is not None:
        options["stop"] = stop
    if req.get("max_tokens") is not None:
        options["num_predict"] = req["max_tokens"]
    options["temperature"] = req["temperature"] if req.get("temperature") is not None else 1.0
    if req.get("seed") is not None:
        options["seed"] = req["seed"]
    for key in ("frequency_penalty", "presence_penalty"):
        if req.get(key) is not None:
            options[key] = req[key]
    options["top_p"] = req["top_p"] if req.get("top_p") else 1.0
    return options


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise MiddlewareError(400, "[] is too short - 'messages'")
    messages: list[dict[str, Any]] = []
    for item in raw:
        if not isinstance(item, dict):
            raise MiddlewareError(400, "invalid message format")
        role, content = item.get("role", ""), item.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                    raise MiddlewareError(400, "invalid message format")
                if part["type"] == "text":
                    messages.append({"role": role, "content": part.get("text", "")})
                else:
                    messages.append({"role": role, "content": "", "images": [part.get("image_url")]})
        elif item.get("tool_calls"):
            messages.append({"role": role, "content": ""})
        else:
            raise MiddlewareError(400, f"invalid message content type: {_go_nil_type(content)}")
    return messages


def _go_nil_type(value: Any) -> str:
    return "<nil>" if value is None else go_type_name(value)


def _think(req: dict[str, Any]) -> bool | None:
    effort = str((req.get("reasoning") or {}).get("effort") or req.get("reasoning_effort") or "")
    if not effort:
        return None
    if effort not in ("high", "medium", "low", "max", "none"):
        raise MiddlewareError(
            400, f'invalid reasoning value: \'{effort}\' (must be "high", "medium", "low", "max", or "none")'
        )
    return effort != "none"


def _format(req: dict[str, Any]) -> Any:
    response_format = req.get("response_format") or {}
    kind = str(response_format.get("type", "")).strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema")
    return None


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The native calls as /v1 writes them: the same id and index, arguments as a JSON string."""
    return [
        {
            "id": call["id"],
            "index": call["function"]["index"],
            "type": "function",
            "function": {
                "name": call["function"]["name"],
                "arguments": orjson.dumps(call["function"]["arguments"], option=orjson.OPT_SORT_KEYS).decode(),
            },
        }
        for call in calls
    ]


def _usage(run: Run) -> dict[str, int]:
    prompt, completion = run.prompt_tokens, run.plan.eval_count
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# ----------------------------------------------------------------------------- /v1/chat/completions


async def chat_completions(emu: EmulatorState, ex: Exchange) -> None:
    req = _decode(ex, "ChatCompletionRequest")
    native = {
        "model": req.get("model", ""),
        "messages": _messages(req.get("messages")),
        "options": _options(req, strict_stop=False),
        "format": _format(req),
        "tools": req.get("tools") or [],
        "think": _think(req),
    }
    run = await prepare_chat(emu, ex, native)
    assert isinstance(run, Run)  # messages are never empty here, so never a load
    ident, created = f"chatcmpl-{_rng.randrange(999)}", int(time.time())
    head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": run.request_model}
    head["system_fingerprint"] = "fp_ollama"
    try:
        if req.get("stream"):
            include_usage = bool((req.get("stream_options") or {}).get("include_usage"))

            def error_event(_message: str) -> bytes:
                # Ollama's ChatWriter reads an in-stream error as an empty chunk (of no model) and stops
                # without [DONE]
                choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                return _event({**head, "model": "", "choices": [choice]})

            await ex.responder.stream(_chat_events(run, head, include_usage), SSE, error_event)
        else:
            content, thinking, calls = await collect(run)
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["reasoning"] = thinking
            if calls:
                message["tool_calls"] = _tool_calls(calls)
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else run.plan.done_reason}
            body = {**head, "object": "chat.completion", "choices": [choice], "usage": _usage(run)}
            await ex.responder.json(200, _encode(body), JSON_PLAIN)
    finally:
        run.release()


async def _chat_events(run: Run, head: dict[str, Any], include_usage: bool) -> AsyncGenerator[bytes, None]:
    first, called = True, False
    async with contextlib.aclosing(run.pieces()) as pieces:
        async for kind, value in pieces:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            first = False
            if kind == "content":
                delta["content"] = value
            elif kind == "thinking":
                delta["reasoning"] = value
            else:
                called = True
                delta["tool_calls"] = _tool_calls(value)
            yield _event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    reason = "tool_calls" if called else run.plan.done_reason
    yield _event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
    if include_usage:
        yield _event({**head, "choices": [], "usage": _usage(run)})
    yield b"data: [DONE]\n\n"


# ----------------------------------------------------------------------------- /v1/completions


async def completions(emu: EmulatorState, ex: Exchange) -> None:
    req = _decode(ex, "CompletionRequest")
    native = {
        "model": req.get("model", ""),
        "prompt": req.get("prompt", ""),
        "options": _options(req, strict_stop=True),
    }
    if req.get("suffix"):
        native["suffix"] = req["suffix"]
    outcome = await prepare_generate(emu, ex, native)
    ident, created = f"cmpl-{_rng.randrange(999)}", int(time.time())
    head = {"id": ident, "object": "text_completion", "created": created}
    tail = {"model": native["model"], "system_fingerprint": "fp_ollama"}
    stream = bool(req.get("stream"))
    include_usage = bool((req.get("stream_options") or {}).get("include_usage"))

    def chunk(text: str, reason: str | None, usage: dict[str, int] | None) -> dict[str, Any]:
        body = {**head, "choices": [{"text": text, "index": 0, "finish_reason": reason}], **tail}
        if usage is not None:
            body["usage"] = usage
        return body

    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if isinstance(outcome, str):  # an empty prompt loads the model
        if stream:

            async def loaded() -> AsyncGenerator[bytes, None]:
                yield _event(chunk("", outcome, zero if include_usage else None))
                yield b"data: [DONE]\n\n"

            await ex.responder.stream(loaded(), SSE, lambda _m: b"")
        else:
            await ex.responder.json(200, _encode(chunk("", outcome, zero)), JSON_PLAIN)
        return
    run = outcome
    try:
        if stream:

            async def events() -> AsyncGenerator[bytes, None]:
                usage = dict(zero) if include_usage else None
                async with contextlib.aclosing(run.pieces()) as pieces:
                    async for kind, value in pieces:
                        yield _event(chunk(value if kind == "content" else "", None, usage))
                yield _event(chunk("", run.plan.done_reason, usage))
                if include_usage:
                    yield _event({**head, "choices": [], **tail, "usage": _usage(run)})
                yield b"data: [DONE]\n\n"

            # as for chat: an in-stream error becomes an empty chunk of no model, and no [DONE]
            await ex.responder.stream(events(), SSE, lambda _m: _event({**chunk("", None, None), "model": ""}))
        else:
            content, _, _ = await collect(run)
            # the whole answer lists its fields in another order than the chunks do, as Ollama's structs do
            choice = {"text": content, "index": 0, "finish_reason": run.plan.done_reason}
            body = {**head, **tail, "choices": [choice], "usage": _usage(run)}
            await ex.responder.json(200, _encode(body), JSON_PLAIN)
    finally:
        run.release()


# ----------------------------------------------------------------------------- embeddings and models


async def embeddings(emu: EmulatorState, ex: Exchange) -> None:
    req = _decode(ex, "OpenAIEmbedRequest")
    encoding = req.get("encoding_format") or ""
    if encoding and encoding.lower() not in ("float", "base64"):
        message = f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64']."
        raise MiddlewareError(400, message)
    value = req.get("input")
    if value == "":
        value = [""]
    if value is None or value == []:
        raise MiddlewareError(400, "invalid input")
    name = req.get("model", "")
    native = {"model": name, "input": value, "dimensions": req.get("dimensions", 0)}
    response = await run_embed(emu, ex, native)
    data = []
    for index, vector in enumerate(response["embeddings"]):
        encoded: Any = vector
        if encoding.lower() == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": encoded, "index": index})
    count = response.get("prompt_eval_count", 0)
    body = {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": count, "total_tokens": count}}
    emu.stats.completed += 1
    await ex.responder.json(200, _encode(body), JSON_PLAIN)


def _model_entry(name: str, modified_ns: int) -> dict[str, Any]:
    parsed_namespace = name.split("/")[-2] if name.count("/") >= 1 else "library"
    return {"id": name, "object": "model", "created": modified_ns // 1_000_000_000, "owned_by": parsed_namespace}


async def models(emu: EmulatorState, ex: Exchange) -> None:
    entries = sorted(emu.store, key=lambda entry: entry.modified_ns, reverse=True)
    data = [_model_entry(entry.model.name, entry.modified_ns) for entry in entries] or None
    await ex.responder.json(200, _encode({"object": "list", "data": data}), JSON_PLAIN)


async def model(emu: EmulatorState, ex: Exchange) -> None:
    name = ex.params["model"]
    show_body(emu, name)  # raises the 404 the native handler would
    entry = emu.store.entry(name)
    assert entry is not None
    await ex.responder.json(200, _encode(_model_entry(name, entry.modified_ns)), JSON_PLAIN)
