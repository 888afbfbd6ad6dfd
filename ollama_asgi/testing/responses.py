"""Writing responses the way Ollama's Go server does: headers with the first byte, one flush per line."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

from ollama_asgi.testing.faults import Fault
from ollama_asgi.types import Send

__all__ = [
    "COALESCE_LINES",
    "JSON",
    "JSON_PLAIN",
    "NDJSON",
    "SPLIT_PAUSE",
    "SSE",
    "TEXT",
    "Chunking",
    "ConnectionDropped",
    "Exchange",
    "Headers",
    "Responder",
    "ndjson_error_line",
]

Chunking = Literal["line", "split", "coalesce"]

JSON = "application/json; charset=utf-8"
JSON_PLAIN = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TEXT = "text/plain; charset=utf-8"

COALESCE_LINES = 4
SPLIT_PAUSE = 0.002

Headers = Sequence[tuple[str, str]]


class ConnectionDropped(Exception):
    """Raised out of the ASGI app to make the server close the socket mid-body (a fault)."""


class Responder:
    """Sends one HTTP response; remembers whether anything was sent and whether it is complete."""

    def __init__(self, send: Send, fault: Fault | None = None, chunking: Chunking = "line") -> None:
        self._send = send
        self.fault = fault
        self.chunking = chunking
        self.started = False
        self.completed = False
        self.status = 0
        self.extra_headers: list[tuple[str, str]] = []

    async def _start(self, status: int, headers: Headers) -> None:
        self.started = True
        self.status = status
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in [*headers, *self.extra_headers]]
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def _body(self, data: bytes, more: bool) -> None:
        if not more:
            self.completed = True
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def finish(self, tail: bytes = b"") -> None:
        """End a started body, after ``tail`` (an error that arrived after the first byte)."""
        if self.started and not self.completed:
            if tail:
                await self._body(tail, True)
            await self._body(b"", False)

    async def send(
        self, status: int, body: bytes = b"", content_type: str | None = None, headers: Headers = ()
    ) -> None:
        """A complete response with a Content-Length (empty bodies carry no Content-Type, like Go)."""
        all_headers = list(headers)
        if content_type is not None:
            all_headers.append(("content-type", content_type))
        all_headers.append(("content-length", str(len(body))))
        await self._start(status, all_headers)
        await self._body(body, False)

    async def head(self, status: int, length: int, content_type: str | None) -> None:
        """A HEAD answer: the headers a GET would carry, no body."""
        headers = [("content-type", content_type)] if content_type else []
        headers.append(("content-length", str(length)))
        await self._start(status, headers)
        await self._body(b"", False)

    async def json(self, status: int, body: bytes, content_type: str = JSON) -> None:
        """A single JSON document, subject to the line faults (it counts as one line)."""
        fault = self.fault
        if (
            fault is None
            or fault.kind not in ("midstream_error", "close_midline", "end_early", "stall")
            or fault.after_lines
        ):
            await self.send(status, body, content_type)
            return

        async def one() -> AsyncGenerator[bytes, None]:
            yield body

        await self.stream(one(), content_type, ndjson_error_line, status=status)

    async def stream(
        self,
        lines: AsyncGenerator[bytes, None],
        content_type: str,
        error_line: Callable[[str], bytes],
        status: int = 200,
    ) -> None:
        """Stream ``lines`` (each a complete NDJSON line or SSE event) with chunked encoding.

        The status line goes out with the first line. Stream faults apply here: after
        ``after_lines`` complete lines a ``midstream_error`` line ends the stream, ``close_midline``
        sends half the next line and drops the connection, ``end_early`` ends the stream cleanly without
        its final chunk (a proxy cut at a line boundary), ``stall`` holds still for ``delay``.
        """
        fault = self.fault
        kind = fault.kind if fault else None
        after = fault.after_lines if fault else 0
        pending: list[bytes] = []
        sent = 0
        headers = [("content-type", content_type)]
        async with contextlib.aclosing(lines) as source:
            async for line in source:
                if kind is not None and sent == after:
                    if kind == "midstream_error":
                        assert fault is not None
                        await self._emit(pending, status, headers, error_line(fault.message), flush=True)
                        break
                    if kind == "end_early":
                        break
                    if kind == "close_midline":
                        await self._emit(pending, status, headers, line[: max(1, len(line) // 2)], flush=True)
                        raise ConnectionDropped("connection dropped mid-line (injected fault)")
                    if kind == "stall":
                        assert fault is not None
                        await self._emit(pending, status, headers, b"", flush=True)
                        await asyncio.sleep(fault.delay)
                    kind = None
                await self._emit(pending, status, headers, line)
                sent += 1
        if pending or not self.started:
            await self._emit(pending, status, headers, b"", flush=True)
        await self._body(b"", False)

    async def _emit(
        self, pending: list[bytes], status: int, headers: Headers, data: bytes, flush: bool = False
    ) -> None:
        """Send ``data`` per the chunking mode; ``pending`` holds coalesced lines not yet sent."""
        if self.chunking == "coalesce":
            if data:
                pending.append(data)
            if not flush and len(pending) < COALESCE_LINES:
                return
            data = b"".join(pending)
            pending.clear()
        if not self.started:
            await self._start(status, headers)
        if not data:
            return
        if self.chunking == "split" and len(data) > 1:
            middle = len(data) // 2
            await self._body(data[:middle], True)
            await asyncio.sleep(SPLIT_PAUSE)
            data = data[middle:]
        await self._body(data, True)


def ndjson_error_line(message: str) -> bytes:
    """The in-stream error Ollama writes once the status is already 200."""
    return orjson.dumps({"error": message}) + b"\n"


@dataclass
class Exchange:
    """One request being answered: what was received, and the responder to answer with."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    responder: Responder
    fault: Fault | None
    started_ns: int
    """``time.perf_counter_ns()`` when the body had been read: the start of ``total_duration``."""
