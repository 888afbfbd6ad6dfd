"""The floor a Python hop costs, on aiohttp's client: a raw ASGI pass-through, streaming line by line.

No routing, auth, parsing or admission: read the body, send it upstream over a pooled keep-alive
connection, relay the answer (NDJSON and SSE one line per ASGI message, anything else whole).
``BENCH_UPSTREAM`` is the upstream base URL.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:11434").rstrip("/")
_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"})
_session: aiohttp.ClientSession | None = None


def _client() -> aiohttp.ClientSession:
    global _session
    if _session is None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0)
        _session = aiohttp.ClientSession(connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout())
    return _session


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _session is not None:
                    await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    url = UPSTREAM + scope["path"]
    if scope.get("query_string"):
        url += "?" + scope["query_string"].decode("latin-1")
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"}
    async with _client().request(scope["method"], url, data=b"".join(chunks), headers=headers) as resp:
        out = [(k.lower(), v) for k, v in resp.raw_headers if k.lower() not in _HOP]
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith(("application/x-ndjson", "text/event-stream")):
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            async for line in resp.content:
                await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        body = await resp.read()
        out.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        await send({"type": "http.response.body", "body": body})
