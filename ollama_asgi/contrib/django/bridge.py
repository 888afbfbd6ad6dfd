"""Run an ASGI app inside a Django async view: the request body in, a streaming response out.

Django has read the body into a temporary file before the view runs; it is fed to the app in
64 KiB chunks from ``request.read()`` (``request.body`` would load it whole and raise above
``DATA_UPLOAD_MAX_MEMORY_SIZE``). The app's messages wait in a small bounded outbox: an answer
with a ``Content-Length`` becomes an ``HttpResponse``; a stream becomes a ``StreamingHttpResponse``
over an async generator that yields each body message as it arrives, and the bound holds the app
back when the client reads slowly. When Django stops the stream because the client disconnected
(Django 5.0 and later watch for that), the generator's ``finally`` reports ``http.disconnect``
and cancels the app's task, which closes the upstream request so Ollama stops generating.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpResponse, StreamingHttpResponse  # type: ignore[import-untyped]

from ollama_asgi.types import ASGIApp, Message, Scope

__all__ = ["CHUNK_SIZE", "call_asgi"]

logger = logging.getLogger("ollama_asgi")

CHUNK_SIZE = 65536
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te", b"trailer"})


class _Receive:
    """The body in chunks, then ``http.disconnect`` once the response consumer is gone."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self._body_done = False
        self.gone = asyncio.Event()

    async def __call__(self) -> Message:
        if not self._body_done:
            chunk: bytes = self._request.read(CHUNK_SIZE)
            self._body_done = len(chunk) < CHUNK_SIZE
            return {"type": "http.request", "body": chunk, "more_body": not self._body_done}
        await self.gone.wait()
        return {"type": "http.disconnect"}


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("the gateway failed after its response started", exc_info=task.exception())


class _Outbox:
    """What the app sends, in order; at most ``size`` messages wait, so a slow client holds the app back."""

    def __init__(self, size: int = 8) -> None:
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._credits = asyncio.Semaphore(size)

    async def send(self, message: Message) -> None:
        await self._credits.acquire()
        self._queue.put_nowait(message)

    def close(self) -> None:
        self._queue.put_nowait(None)  # never waits, so it works from a cancelled task too

    async def get(self) -> Message | None:
        message = await self._queue.get()
        if message is not None:
            self._credits.release()
        return message

    async def body(self) -> AsyncIterator[bytes]:
        while (message := await self.get()) is not None:
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


async def call_asgi(app: ASGIApp, scope: Scope, request: Any) -> Any:
    """Call ``app`` with ``scope`` and ``request``'s body; return the Django response for its answer."""
    receive = _Receive(request)
    outbox = _Outbox()

    async def run() -> None:
        try:
            await app(scope, receive, outbox.send)
        finally:
            outbox.close()

    task = asyncio.ensure_future(run())
    try:
        start = await outbox.get()
        if start is None or start["type"] != "http.response.start":
            await task  # raises what went wrong; Django answers 500 and logs it
            raise RuntimeError("the ASGI app ended without starting a response")
        headers = [(bytes(k).lower(), bytes(v)) for k, v in start.get("headers", ())]
        headers = [(k, v) for k, v in headers if k not in _HOP_BY_HOP]
        if any(name == b"content-length" for name, _ in headers):
            body = b"".join([chunk async for chunk in outbox.body()])
            await task
            return _with_headers(HttpResponse(body, status=start["status"]), headers)
    except BaseException:
        receive.gone.set()
        task.cancel()
        raise
    task.add_done_callback(_retrieve)
    return _with_headers(StreamingHttpResponse(_stream(outbox, task, receive), status=start["status"]), headers)


async def _stream(outbox: _Outbox, task: asyncio.Task[None], receive: _Receive) -> AsyncIterator[bytes]:
    complete = False
    try:
        async for chunk in outbox.body():
            yield chunk
        complete = True
    finally:
        # Closed early: Django stopped iterating because the client went away.
        receive.gone.set()
        if not complete and not task.done():
            task.cancel()


def _with_headers(response: Any, headers: list[tuple[bytes, bytes]]) -> Any:
    if not any(name == b"content-type" for name, _ in headers):
        del response["Content-Type"]
    for name, value in headers:
        if name == b"content-length" and response.streaming:
            continue
        response[name.decode("latin-1")] = value.decode("latin-1")
    return response
