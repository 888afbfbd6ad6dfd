"""Relay a native answer to a ``/v1`` client, rendered in the OpenAI format.

Each native NDJSON line is parsed and turned into SSE events as it arrives (the per-chunk JSON
work is the price of ``num_ctx`` and ``keep_alive`` control for OpenAI clients). An upstream
error before the first byte keeps its status with an OpenAI error body; one after it becomes an
error event, which the openai client raises, instead of Ollama's silent stop.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeGuard

import aiohttp
import orjson

from ollama_asgi.anthropic_answers import MessagesStream, whole_message
from ollama_asgi.errors import GatewayError, stream_error_line
from ollama_asgi.openai_answers import ChatStream, CompletionStream, embeddings_response, whole_response
from ollama_asgi.plan import Prepared
from ollama_asgi.relay import RelayResult, in_own_task, stream_headers
from ollama_asgi.responses_answers import ResponsesStream
from ollama_asgi.responses_answers import whole_response as whole_responses_response
from ollama_asgi.types import Message, Send
from ollama_asgi.upstream import UpstreamResponse

__all__ = ["relay_openai"]

_JSON = b"application/json"


def _error_message(raw: bytes, status: int) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"Ollama answered {status}"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error or f"Ollama answered {status}")


def relay_openai(
    resp: UpstreamResponse,
    send: Send,
    prepared: Prepared,
    *,
    started: bool,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> Awaitable[RelayResult]:
    """What to await: a coroutine for a whole answer or an error, a task of its own for a stream
    (``relay.in_own_task`` says why)."""
    extra = extra_headers or []
    if resp.status != 200 or not prepared.stream:
        return _relay_whole(resp, send, prepared, started, extra)
    return in_own_task(_relay_stream(resp, send, prepared, started, extra))


async def _relay_whole(
    resp: UpstreamResponse, send: Send, prepared: Prepared, started: bool, extra: list[tuple[bytes, bytes]]
) -> RelayResult:
    try:
        raw = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise GatewayError(502, f"Ollama closed the connection before the answer was complete: {exc}") from exc
    if resp.status != 200:
        message = _error_message(raw, resp.status)
        if started:
            tail = stream_error_line(message, sse=True, anthropic=prepared.openai_route == "anthropic_messages")
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            return RelayResult(resp.status, len(tail), None, message)
        raise GatewayError(resp.status, message, [h for h in extra if h[0] == b"retry-after"])
    try:
        native = orjson.loads(raw)
    except orjson.JSONDecodeError:
        native = None
    if not isinstance(native, dict):
        raise GatewayError(502, "Ollama answered with something that is not a JSON object")
    route = prepared.openai_route or ""
    if route == "openai_embeddings":
        answer = embeddings_response(prepared.model, native, prepared.encoding_format)
    elif route == "anthropic_messages":
        answer = whole_message(prepared.model, native)
    elif route == "openai_responses":
        answer = whole_responses_response(prepared.model, prepared.request, native)
    else:
        answer = whole_response(route, prepared.model, native)
    body = orjson.dumps(answer) + b"\n"  # Ollama's /v1 writes its answers with json.Encoder
    headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return RelayResult(200, len(body), raw if len(raw) < 1 << 20 else None)


def _translator(prepared: Prepared) -> ChatStream | CompletionStream | MessagesStream | ResponsesStream:
    route = prepared.openai_route
    if route == "openai_chat":
        return ChatStream(prepared.model, prepared.include_usage)
    if route == "anthropic_messages":
        return MessagesStream(prepared.model, prepared.request)
    if route == "openai_responses":
        return ResponsesStream(prepared.model, prepared.request)
    return CompletionStream(prepared.model, prepared.include_usage)


def _ends_own_way(translator: object) -> TypeGuard[MessagesStream | ResponsesStream]:
    """Anthropic and Responses streams end a failure with an event of their API's own."""
    return isinstance(translator, MessagesStream | ResponsesStream)


async def _relay_stream(
    resp: UpstreamResponse, send: Send, prepared: Prepared, started: bool, extra: list[tuple[bytes, bytes]]
) -> RelayResult:
    translator = _translator(prepared)
    # The head goes out with the first event, so a failure before it still gets a real status.
    head: Message | None = None
    if not started:
        head = {"type": "http.response.start", "status": 200, "headers": stream_headers(b"text/event-stream", extra)}
    pending = b""
    sent = 0
    final: bytes | None = None
    error: str | None = None
    broken = False
    readany = resp.content.readany
    try:
        while True:
            chunk = await readany()
            if chunk:
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
            elif pending.strip():
                # Ollama answers an empty prompt (a load) with one JSON object and no newline,
                # even when asked to stream.
                lines, pending = [pending], b""
            else:
                if final is None:
                    error = "Ollama ended the stream before its final chunk"
                break
            out = b""
            for line in lines:
                if not line.strip():
                    continue
                native = orjson.loads(line)
                if not isinstance(native, dict):
                    error = "Ollama sent a line that is not a JSON object"
                    break
                if "error" in native:
                    error = str(native["error"])
                    break
                out += translator.feed(native)
                if native.get("done"):
                    final = line
            if out:
                if head is not None:
                    await send(head)
                    head = None
                await send({"type": "http.response.body", "body": out, "more_body": True})
                sent += len(out)
            if error:
                break
    except orjson.JSONDecodeError:
        error = "Ollama sent a line that is not JSON"
    except TimeoutError:
        error, broken = "Ollama stopped sending for longer than the read timeout", True
    except aiohttp.ClientError as exc:
        error, broken = f"the connection to Ollama broke mid-stream: {exc.__class__.__name__}", True
    except (AttributeError, KeyError, TypeError):  # valid JSON in a shape Ollama never sends
        error = "Ollama sent a chunk the gateway cannot translate"
    if head is not None:
        if error:
            raise GatewayError(502, error)
        await send(head)
    tail = b""
    if error:
        tail = translator.fail(error) if _ends_own_way(translator) else stream_error_line(error, sse=True)
    await send({"type": "http.response.body", "body": tail, "more_body": False})
    return RelayResult(200, sent + len(tail), final, error, broken)
