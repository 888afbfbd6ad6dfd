"""Relay an upstream response to the client without buffering or re-framing streams.

NDJSON is forwarded up to the last complete line of what has arrived, SSE up to the last complete
event, each as soon as it arrives, so a client never sees half a JSON object and never waits for
a buffer to fill. A stream that breaks after it started ends with one terminal error line or event,
as Ollama does, instead of a silent cut.

The final chunk is found without a JSON parse per token: in NDJSON it is the last line of the
stream, parsed once when the stream ends (any spelling of ``"done": true``, any key order); in
SSE it is the ``usage`` event, found by a byte search. Nothing is ever sent after a final chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass

import aiohttp
import orjson

from ollama_asgi.errors import GatewayError, stream_error_line
from ollama_asgi.types import Message, Send
from ollama_asgi.upstream import UpstreamResponse

__all__ = ["RelayResult", "SendWatch", "in_own_task", "relay", "stream_headers"]

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
_MAX_PENDING = 64 * 1024 * 1024  # one line longer than this is not Ollama talking
_KEEP_FINAL = 1024 * 1024  # non-streamed bodies up to this size are kept for token accounting


@dataclass(slots=True)
class RelayResult:
    status: int
    sent: int  # body bytes sent to the client
    final: bytes | None  # the final chunk or whole small body, for token accounting
    error: str | None = None  # set when a started stream had to be ended with an error
    broken: bool = False  # the connection to Ollama failed (a timeout, a reset): the backend's fault
    stalled: bool = False  # the client stopped reading for longer than ``send_timeout``: the client's fault
    ollama_error: str | None = None  # Ollama ended a started stream with its own error line (passed on)


class _Watched:
    __slots__ = ("consumed", "since", "stalled", "task")

    def __init__(self, task: asyncio.Task[object] | asyncio.Future[RelayResult]) -> None:
        self.task = task
        self.consumed = -1
        self.since = 0.0
        self.stalled = False


class SendWatch:
    """Ends relays whose client stopped reading, so a stalled client cannot hold a slot for ever.

    A relay blocked in ``send`` is not reading its upstream answer: bytes pile up unread in the
    upstream reader (or the answer is complete and only the client's part is left), and what the
    relay has taken does not move. One sweep checks every relay for that state, every second (or
    every quarter of ``timeout``), instead of a timer per chunk, and cancels the task awaiting a
    send that made no progress for ``timeout``. A relay waiting on a silent Ollama has nothing
    waiting unread, so it is left to ``read_timeout``.

    Memory stays bounded meanwhile: ASGI servers (uvicorn's ``send`` awaits the transport's drain
    once its write buffer passes the high-water mark) hold at most one message beyond their buffer,
    and aiohttp stops reading the upstream socket once its reader passes its high-water mark (at
    most about 370 KB waited unread per stalled relay in ``tests/test_relay.py``).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._relays: dict[UpstreamResponse, _Watched] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, resp: UpstreamResponse, task: asyncio.Task[object] | asyncio.Future[RelayResult]) -> None:
        """Watch the relay of ``resp``; ``task`` is the one awaiting its sends (cancelled when stalled)."""
        loop = task.get_loop()
        if loop is not self._loop:  # a host serving the gateway from another loop: start over there
            self.close()
            self._loop = loop
        self._relays[resp] = _Watched(task)
        if self._sweeper is None:
            self._arm()

    def done(self, resp: UpstreamResponse) -> bool:
        """Stop watching ``resp``; True when its relay was ended for a stalled client."""
        watched = self._relays.pop(resp, None)
        return watched is not None and watched.stalled

    def _arm(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            self._sweeper = loop.call_later(min(1.0, self.timeout / 4), self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        assert self._loop is not None
        now = self._loop.time()
        for resp, watched in self._relays.items():
            if watched.stalled or watched.task.done():
                continue
            content = resp.content
            unread = content._size  # bytes Ollama sent that the relay has not taken (aiohttp has no public count)
            consumed = content.total_bytes - unread
            waiting = unread > 0 or content.is_eof() or content.exception() is not None or resp.closed
            if not waiting or consumed != watched.consumed:
                watched.consumed, watched.since = (consumed, now) if waiting else (-1, 0.0)
            elif now - watched.since >= self.timeout:
                watched.stalled = True
                watched.task.cancel()
        if self._relays:
            self._arm()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._relays.clear()


def stream_headers(content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    """Headers for a streamed answer: nothing between here and the client may buffer or compress it."""
    headers = [(b"content-type", content_type), *(extra or [])]
    headers.append((b"x-accel-buffering", b"no"))
    headers.append((b"cache-control", b"no-cache"))
    if not any(k == b"content-encoding" for k, _ in headers):
        # Host compression (Starlette's GZipMiddleware) holds back NDJSON; an explicit encoding
        # makes it step aside.
        headers.append((b"content-encoding", b"identity"))
    return headers


def _response_headers(resp: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    return [(name, v) for k, v in resp.raw_headers if (name := k.lower()) not in _DROP]


def _framing(resp: UpstreamResponse) -> bytes | None:
    ctype = resp.headers.get("Content-Type", "")
    if ctype.startswith("application/x-ndjson"):
        return b"\n"
    if ctype.startswith("text/event-stream"):
        return b"\n\n"
    return None


def relay(
    resp: UpstreamResponse,
    send: Send,
    *,
    head: bool = False,
    started: bool = False,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    expect_final: bool = False,
) -> Awaitable[RelayResult]:
    """Send ``resp`` to the client; returns what to await: a coroutine for a whole answer, a task of
    its own for a stream (see ``in_own_task``).

    ``expect_final`` (generate and chat streams) makes a stream that ends cleanly but without its
    ``"done":true`` chunk or an error line end with an error line, so a client never takes a cut
    answer for a whole one.

    ``started`` means the gateway already sent SSE headers (keep-alive comments while queued): the
    upstream's status can no longer be sent, so a failure becomes an SSE error event.
    """
    separator = _framing(resp)
    if started:
        if separator != b"\n\n" or resp.status != 200:
            return _error_into_started_stream(resp, send)
        return in_own_task(_relay_frames(resp, send, separator, expect_final=expect_final))
    if separator is None or head:
        return _relay_whole(resp, send, head=head, extra_headers=extra_headers)
    headers = [(k, v) for k, v in _response_headers(resp) if k != b"content-type"]
    if extra_headers:
        headers.extend(extra_headers)
    ctype = resp.headers.get("Content-Type", "").encode("latin-1")
    start = {"type": "http.response.start", "status": resp.status, "headers": stream_headers(ctype, headers)}
    return in_own_task(_relay_frames(resp, send, separator, start, expect_final=expect_final))


def in_own_task(relaying: Coroutine[None, None, RelayResult]) -> Awaitable[RelayResult]:
    """Run a stream's relay loop as a task of its own, awaited by the request's task.

    Each chunk wakes the coroutine that waits for it, and CPython resumes a suspended coroutine
    through every coroutine that awaits it, down from the task's first one. In the request's own
    task that chain holds the server's and the host's layers (seven coroutines in a Starlette
    host, more behind Django's middleware) and the gateway's; in a task of its own it is the relay loop and
    aiohttp's read: 4,500 fewer instructions per chunk in a Starlette host (``bench.instructions``),
    whatever the host's depth. Cancelling the request's task (the client left) cancels this one.
    """
    return asyncio.get_running_loop().create_task(relaying)


async def _relay_whole(
    resp: UpstreamResponse, send: Send, *, head: bool, extra_headers: list[tuple[bytes, bytes]] | None
) -> RelayResult:
    # Ollama writes non-streamed answers in one go at the end, so holding the body costs no latency
    # and lets a broken upstream still be answered with a proper status.
    try:
        body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise GatewayError(502, f"Ollama closed the connection before the answer was complete: {exc}") from exc
    headers = _response_headers(resp)
    if extra_headers:
        headers.extend(extra_headers)
    if head:
        length = resp.headers.get("Content-Length")
        if length is not None:
            headers.append((b"content-length", length.encode()))
    else:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
    return RelayResult(resp.status, len(body), body if len(body) <= _KEEP_FINAL else None)


async def _error_into_started_stream(resp: UpstreamResponse, send: Send) -> RelayResult:
    try:
        body = await resp.read()
        message = str(orjson.loads(body).get("error", "")) or f"Ollama answered {resp.status}"
    except Exception:
        message = f"Ollama answered {resp.status}"
    if isinstance(message, dict):
        message = str(message.get("message", message))
    tail = stream_error_line(message, sse=True)
    await send({"type": "http.response.body", "body": tail, "more_body": False})
    return RelayResult(resp.status, len(tail), None, message)


async def _relay_frames(
    resp: UpstreamResponse, send: Send, separator: bytes, start: Message | None = None, *, expect_final: bool = False
) -> RelayResult:
    """Forward whole frames; ``start``, when given, is sent with the first one.

    Ollama sends its response head together with the first line, so holding the head until that
    line costs no latency and lets a stream that fails before its first line (or whose first line is
    not JSON: a proxy's error page, a wrong server) be answered with a real 502.
    """
    sse = separator == b"\n\n"
    pending = b""
    final: bytes | None = None
    sent = 0
    body = b""  # after the loop: the last frames sent
    error: str | None = None
    ollama_error: str | None = None
    broken = no_final = False
    readany = resp.content.readany
    try:
        while chunk := await readany():
            if not pending and chunk.endswith(separator):
                body = chunk  # the common case: whole lines, one per token
            else:
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
                body = chunk[:cut]
            if start is not None:
                if not sse and not _json_object(body[: body.find(separator)]):
                    raise GatewayError(502, "Ollama answered with something that is not JSON")
                await send(start)
                start = None
            await send({"type": "http.response.body", "body": body, "more_body": True})
            sent += len(body)
            if sse and b'"usage"' in body:
                final = _last_frame_with(body, b'"usage"', separator)
        else:
            if pending.strip():
                error = "Ollama ended the stream in the middle of a line"
            elif expect_final:
                no_final = True  # unless the last line says otherwise (below)
    except TimeoutError:
        error, broken = "Ollama stopped sending for longer than the read timeout", True
    except aiohttp.ClientError as exc:
        error, broken = f"the connection to Ollama broke mid-stream: {exc.__class__.__name__}", True
    if not sse and body:
        last = body[body.rfind(b"\n", 0, len(body) - 1) + 1 : -1]
        ending = _ending(last)
        if ending is not None:
            if ending.get("done") is True:
                final, error, broken, no_final = last, None, False, False  # whole: nothing may follow it
            elif "error" in ending:
                no_final = False  # Ollama ended the stream with its own error line
                ollama_error = str(ending["error"])
    if no_final:
        error = "Ollama ended the stream before its final chunk"
    if start is not None:  # not one whole line arrived
        if error:
            raise GatewayError(502, error)
        await send(start)
    tail = stream_error_line(error, sse=sse) if error else b""
    await send({"type": "http.response.body", "body": tail, "more_body": False})
    return RelayResult(resp.status, sent + len(tail), final, error, broken, ollama_error=ollama_error)


def _ending(line: bytes) -> dict[str, object] | None:
    """The last line of a stream as an object, when it may be a final chunk or an error line."""
    if b'"done"' not in line and b'"error"' not in line:
        return None
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _json_object(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def _last_frame_with(body: bytes, marker: bytes, separator: bytes) -> bytes:
    at = body.rfind(marker)
    start = body.rfind(separator, 0, at) + len(separator) if body.rfind(separator, 0, at) >= 0 else 0
    end = body.find(separator, at)
    return body[start : end if end >= 0 else len(body)]
