"""Reading a request: its body (size-limited), what is known of it, and the watch for its client leaving.

``Request`` is everything known once a request is read, parsed and authenticated; ``Progress`` is
how far its answer got. Both are passed forward through the later steps, never back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ollama_asgi.auth import Principal
from ollama_asgi.errors import GatewayError
from ollama_asgi.protocol import ParsedRequest
from ollama_asgi.record import RequestRecord
from ollama_asgi.relay import RelayResult
from ollama_asgi.routing import Route
from ollama_asgi.types import Message, Receive, Scope

__all__ = ["WATCH_AFTER", "ClientGone", "DisconnectWatcher", "Progress", "Request", "read_body", "stream_body"]


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


@dataclass(slots=True)
class Request:
    """Everything known about a request once it is parsed and authenticated; passed forward only."""

    scope: Scope
    path: str  # below the mount point
    route: Route
    parsed: ParsedRequest | None
    principal: Principal | None
    body: bytes | AsyncIterator[bytes] | None
    head: bool
    loop: asyncio.AbstractEventLoop
    rate_checked: bool = False


@dataclass(slots=True)
class Progress:
    record: RequestRecord  # what is logged and counted when the request ends
    started: bool = False  # the response head went out (SSE keep-alive while queued)
    relaying: asyncio.Future[RelayResult] | None = None  # a stream's relay task (``relay.in_own_task``)

    def answered(self) -> bool:
        """The whole answer went out: an ``http.disconnect`` now ends the exchange, not a generation.

        A stream's relay task finishes a loop turn before the request's task resumes, and the
        server reports the finished response to ``receive`` as ``http.disconnect`` meanwhile.
        """
        relaying = self.relaying
        return self.record.result is not None or (relaying is not None and relaying.done())


WATCH_AFTER = 0.05  # seconds before a request's client is watched for disconnects


class DisconnectWatcher:
    """Cancel the exchange when the client goes away, so Ollama stops generating.

    The request body has been read by the time this runs, so the next ASGI message can only be
    ``http.disconnect``; cancelling the task closes the upstream connection within one loop turn.

    The exchange runs in the request's own task; a listener task, started by a timer after
    ``WATCH_AFTER``, cancels it on disconnect. Requests that end sooner (listings, model facts,
    short embeddings) never pay for a second task and the loop turns it costs, which was 20 of the
    gateway's 240 CPU µs per request at one client; a generation left by its client in its
    first moments runs at most that long before it is cancelled.
    """

    __slots__ = ("gone", "_listener", "_progress", "_receive")

    def __init__(self, receive: Receive, progress: Progress) -> None:
        self._receive = receive
        self._progress = progress
        self.gone = False
        self._listener: asyncio.Task[None] | None = None

    def start(self, task: asyncio.Task[object]) -> None:
        """Start listening (the timer calls this once the exchange has run for ``WATCH_AFTER``)."""
        if not task.done():
            self._listener = task.get_loop().create_task(self._listen(task))

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()

    async def _listen(self, task: asyncio.Task[object]) -> None:
        while True:
            message: Message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self._progress.answered():
                    self.gone = True
                    task.cancel()
                return


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refused with 413 past ``limit`` bytes (before reading, when Content-Length says so)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise GatewayError(400, "invalid Content-Length header") from None
            if declared > limit:
                raise GatewayError(413, f"request body is larger than the {limit} bytes allowed")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise GatewayError(413, f"request body is larger than the {limit} bytes allowed")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


async def stream_body(receive: Receive) -> AsyncIterator[bytes]:
    """The body as it arrives, for uploads relayed without being held (blobs)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return
