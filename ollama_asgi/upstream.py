"""The one place that talks HTTP to Ollama.

aiohttp's client is used on the hot path because it costs a fraction of httpx's default transport
per request (see BENCHMARKS.md); keeping it behind this module lets the choice change without
touching the relay. Sessions are created lazily inside the running loop, because mounted apps get
no lifespan events from Starlette or Litestar and Django rejects them outright.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterable

import aiohttp
import orjson

__all__ = ["Upstream", "UpstreamError", "UpstreamResponse"]

UpstreamResponse = aiohttp.ClientResponse


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange; ``kind`` says how."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "connect" | "timeout" | "protocol"


class Upstream:
    """One Ollama backend: its base URL, connection pool and timeouts.

    ``read_timeout`` bounds the silence between upstream bytes. The response head must arrive
    within it of the request going out (a cold model sends nothing until it is loaded): one
    ``asyncio.timeout`` per request. For the body, which arrives a token at a time, a timer
    rescheduled on every read (aiohttp's ``sock_read``) would cost more than relaying the token, so
    one sweep per backend checks every open body's progress instead (``_sweep``) and ends a silent
    one with the same timeout error aiohttp raises. A streamed request body (a blob upload) may
    take longer than ``read_timeout`` to send: its request keeps aiohttp's per-read timer instead.
    """

    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float, name: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name or self.base_url
        self.read_timeout = read_timeout
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout)
        self._streaming_timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bodies: dict[UpstreamResponse, list[float]] = {}  # open body -> [bytes seen, when they last grew]
        self._sweeper: asyncio.TimerHandle | None = None

    def _get_session(self, loop: asyncio.AbstractEventLoop | None = None) -> aiohttp.ClientSession:
        if loop is None:
            loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._retire(self._session, self._loop)
            self._bodies = {}
            self._sweeper = None  # one armed on the old loop finds nothing left to check
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,  # relay bytes exactly as Ollama sent them
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
            self._loop = loop
        return self._session

    @staticmethod
    def _retire(session: aiohttp.ClientSession | None, loop: asyncio.AbstractEventLoop | None) -> None:
        """Close a session made in another event loop (a host that serves one gateway from two loops)."""
        if session is None or session.closed or loop is None or loop.is_closed():
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(session.close(), loop)

    async def open(
        self,
        method: str,
        path: str,
        *,
        query: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | AsyncIterable[bytes] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> UpstreamResponse:
        """Send a request and return once the response headers arrived; the caller must close it.

        ``loop`` is the running loop when the caller already has it (saves asking again per request).
        """
        url = self.base_url + path
        if query:
            url += "?" + query.decode("latin-1")
        session = self._get_session(loop)
        try:
            if body is None or isinstance(body, bytes):
                async with asyncio.timeout(self.read_timeout):
                    resp = await session.request(method, url, data=body, headers=list(headers), allow_redirects=False)
            else:
                resp = await session.request(
                    method,
                    url,
                    data=body,
                    headers=list(headers),
                    allow_redirects=False,
                    timeout=self._streaming_timeout,
                )
            self._watch(resp)
            return resp
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError("connect", f"cannot connect to Ollama at {self.name}: {exc.os_error}") from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError("timeout", f"Ollama at {self.name} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("protocol", f"Ollama at {self.name} broke the connection: {exc}") from exc

    def _watch(self, resp: UpstreamResponse) -> None:
        """The head arrived: the body's silences are checked by ``_sweep`` from now on."""
        connection = resp.connection
        if connection is None or resp.closed:
            return  # the whole answer came with its head
        assert self._loop is not None  # set by _get_session for this request
        self._bodies[resp] = [resp.content.total_bytes, self._loop.time()]
        if self._sweeper is None:
            self._arm()

    def _arm(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            self._sweeper = loop.call_later(min(1.0, self.read_timeout / 4), self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        assert self._loop is not None
        now = self._loop.time()
        for resp, seen in list(self._bodies.items()):
            if resp.closed:
                del self._bodies[resp]
            elif resp.content.total_bytes != seen[0]:
                seen[0], seen[1] = resp.content.total_bytes, now
            elif now - seen[1] >= self.read_timeout:
                del self._bodies[resp]
                resp.content.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))
                resp.close()
        if self._bodies:
            self._arm()

    @property
    def relaying(self) -> bool:
        """Some answer's body is still being read from this backend."""
        return any(not resp.closed for resp in self._bodies)

    @property
    def closed(self) -> bool:
        """No connection pool open (never used, or closed by ``aclose``)."""
        return self._session is None or self._session.closed

    async def call_json(
        self, method: str, path: str, body: object = None, *, within: float = 30.0
    ) -> tuple[int, object]:
        """A small JSON exchange of the gateway's own (model info, loads); returns status and parsed body."""
        payload = None if body is None else orjson.dumps(body)
        headers = [("Content-Type", "application/json")] if payload is not None else []
        try:
            async with asyncio.timeout(within):
                resp = await self.open(method, path, headers=headers, body=payload)
                async with resp:
                    raw = await resp.read()
        except TimeoutError as exc:
            raise UpstreamError("timeout", f"Ollama at {self.name} did not answer {path} within {within:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("protocol", f"Ollama at {self.name} broke the connection: {exc}") from exc
        try:
            return resp.status, orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            return resp.status, None

    async def probe(self, within: float = 2.0) -> bool:
        """True when Ollama answers ``GET /`` with 200 within ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                resp = await self.open("GET", "/")
                async with resp:
                    await resp.read()
                    return resp.status == 200
        except (UpstreamError, TimeoutError, aiohttp.ClientError):
            return False

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._bodies.clear()
        session, self._session = self._session, None
        if session is not None and not session.closed:
            try:
                await session.close()
            except RuntimeError:  # the session's loop is gone (a host that ran us in another loop)
                pass
