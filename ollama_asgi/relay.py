"""Relay an upstream response to the client without buffering or re-framing streams.

NDJSON is forwarded up to the last complete line of what has arrived, SSE up to the last complete
event, each as soon as it arrives, so a client never sees half a JSON object and never waits for
a buffer to fill. A stream that breaks after it started ends with one terminal error line or event,
as Ollama does, instead of a silent cut.
"""

from __future__ import annotations

import aiohttp

from ollama_asgi.errors import GatewayError, stream_error_line
from ollama_asgi.types import Send
from ollama_asgi.upstream import UpstreamResponse

__all__ = ["relay"]

# Hop-by-hop and per-connection headers never cross the proxy; the server sets its own Date/Server.
_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"date",
        b"server",
        b"set-cookie",
    }
)
_STREAM_HEADERS = [(b"x-accel-buffering", b"no"), (b"cache-control", b"no-cache")]
_MAX_PENDING = 64 * 1024 * 1024  # one line longer than this is not Ollama talking


def _response_headers(resp: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v) for k, v in resp.raw_headers if k.lower() not in _DROP]


def _framing(resp: UpstreamResponse) -> bytes | None:
    ctype = resp.headers.get("Content-Type", "")
    if ctype.startswith("application/x-ndjson"):
        return b"\n"
    if ctype.startswith("text/event-stream"):
        return b"\n\n"
    return None


async def relay(resp: UpstreamResponse, send: Send, *, head: bool = False) -> int:
    """Send ``resp`` to the client; return the number of body bytes sent."""
    separator = _framing(resp)
    if separator is None or head:
        return await _relay_whole(resp, send, head=head)
    headers = _response_headers(resp)
    headers.extend(_STREAM_HEADERS)
    if not any(k == b"content-encoding" for k, _ in headers):
        # Host compression (Starlette's GZipMiddleware) holds back NDJSON; an explicit encoding
        # makes it step aside.
        headers.append((b"content-encoding", b"identity"))
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    return await _relay_frames(resp, send, separator)


async def _relay_whole(resp: UpstreamResponse, send: Send, *, head: bool) -> int:
    # Ollama writes non-streamed answers in one go at the end, so holding the body costs no latency
    # and lets a broken upstream still be answered with a proper status.
    try:
        body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise GatewayError(502, f"Ollama closed the connection before the answer was complete: {exc}") from exc
    headers = _response_headers(resp)
    if head:
        length = resp.headers.get("Content-Length")
        if length is not None:
            headers.append((b"content-length", length.encode()))
    else:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
    return len(body)


async def _relay_frames(resp: UpstreamResponse, send: Send, separator: bytes) -> int:
    sse = separator == b"\n\n"
    pending = b""
    sent = 0
    error: str | None = None
    try:
        async for chunk in resp.content.iter_any():
            if pending:
                chunk = pending + chunk
            cut = chunk.rfind(separator)
            if cut < 0:
                pending = chunk
                if len(pending) > _MAX_PENDING:
                    error = "Ollama sent a line longer than the gateway accepts"
                    break
                continue
            cut += len(separator)
            pending = chunk[cut:]
            await send({"type": "http.response.body", "body": chunk[:cut], "more_body": True})
            sent += cut
        else:
            if pending.strip():
                error = "Ollama ended the stream in the middle of a line"
    except TimeoutError:
        error = "Ollama stopped sending for longer than the read timeout"
    except aiohttp.ClientError as exc:
        error = f"the connection to Ollama broke mid-stream: {exc.__class__.__name__}"
    tail = stream_error_line(error, sse=sse) if error else b""
    await send({"type": "http.response.body", "body": tail, "more_body": False})
    return sent + len(tail)
