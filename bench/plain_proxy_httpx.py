"""The floor a Python hop costs, on httpx's default transport: a raw ASGI pass-through, line by line.

The same proxy as ``plain_proxy_aiohttp`` with only the HTTP client swapped, so the difference
between the two is the client's own cost. ``BENCH_UPSTREAM`` is the upstream base URL.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:11434").rstrip("/")
_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"})
_client: httpx.AsyncClient | None = None


def _get_client() -> httpx.AsyncClient:
    global _client
    if _client is None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=512, keepalive_expiry=30.0)
        _client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None))
    return _client


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _client is not None:
                    await _client.aclose()
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
    headers = [(k, v) for k, v in scope["headers"] if k == b"content-type"]
    request = _get_client().build_request(scope["method"], url, content=b"".join(chunks), headers=headers)
    resp = await _get_client().send(request, stream=True)
    try:
        out = [(k.lower(), v) for k, v in resp.headers.raw if k.lower() not in _HOP]
        ctype = resp.headers.get("content-type", "")
        if ctype.startswith(("application/x-ndjson", "text/event-stream")):
            await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
            async for line in resp.aiter_lines():
                await send({"type": "http.response.body", "body": line.encode() + b"\n", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        body = await resp.aread()
        out.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
        await send({"type": "http.response.body", "body": body})
    finally:
        await resp.aclose()
