"""The gateway's own CPU per request and per chunk, in-process, with a canned upstream and no sockets.

``python -m bench.overhead [--package-path DIR] [--requests N]`` prints one JSON object. The host
app (Starlette with the gateway at ``/llm``, as in ``bench.gateway_host``) is called directly with
ASGI messages, and the upstream client's ``open`` answers from memory, so what is timed is only the
Python the gateway and its host run: routing, auth, parsing, ``num_ctx``, admission, placement,
the relay, telemetry. It moves far less between runs than anything that crosses a socket on a
shared machine, which makes it the figure to compare before and after a hot-path change; the
end-to-end figures in ``bench.run`` say what a client sees.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

MODEL = "qwen2.5:0.5b"
_SHOW = {"model_info": {"qwen2.context_length": 32768}, "capabilities": ["completion", "tools"]}
_TAGS = {"models": [{"name": MODEL, "model": MODEL, "size": 397821319}]}
_PS = {
    "models": [
        {
            "name": MODEL,
            "model": MODEL,
            "size": 397821319,
            "size_vram": 397821319,
            "context_length": 4096,
            "expires_at": "2099-01-01T00:00:00Z",
        }
    ]
}
_LINE = (
    b'{"model":"qwen2.5:0.5b","created_at":"2026-01-01T00:00:00.000000000Z",'
    b'"message":{"role":"assistant","content":"hello "},"done":false}\n'
)
_FINAL = (
    b'{"model":"qwen2.5:0.5b","created_at":"2026-01-01T00:00:00.000000000Z","message":{"role":"assistant",'
    b'"content":""},"done_reason":"length","done":true,"total_duration":293430,"load_duration":152566,'
    b'"prompt_eval_count":15,"prompt_eval_duration":20398,"eval_count":1,"eval_duration":18746}\n'
)


class _Content:
    """aiohttp's ``StreamReader`` as the relay reads it: ``readany`` (``iter_any`` for older versions)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self._unread = iter(chunks)

    async def readany(self) -> bytes:
        return next(self._unread, b"")

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class _Response:
    """Just what the relay reads from an aiohttp ``ClientResponse``."""

    def __init__(self, status: int, content_type: str, chunks: list[bytes]) -> None:
        from multidict import CIMultiDict, CIMultiDictProxy

        self.status = status
        self._chunks = chunks
        length = str(sum(len(c) for c in chunks))
        self.headers = CIMultiDictProxy(CIMultiDict({"Content-Type": content_type, "Content-Length": length}))
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = (
            (b"Content-Type", content_type.encode()),
            (b"Date", b"Thu, 01 Jan 2026 00:00:00 GMT"),
        )
        if content_type != "application/x-ndjson":
            self.raw_headers += ((b"Content-Length", length.encode()),)
        self.content = _Content(chunks)

    async def read(self) -> bytes:
        return b"".join(self._chunks)

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


def _canned(method: str, path: str, body: bytes | None) -> _Response:
    import orjson

    if path == "/api/chat":
        request = orjson.loads(body or b"{}")
        if request.get("stream", True):
            tokens = int(request.get("options", {}).get("num_predict", 1))
            return _Response(200, "application/x-ndjson", [_LINE] * tokens + [_FINAL])
        return _Response(200, "application/json; charset=utf-8", [_FINAL.rstrip(b"\n")])
    canned = {"/api/show": _SHOW, "/api/tags": _TAGS, "/api/ps": _PS}.get(path)
    if canned is not None:
        return _Response(200, "application/json; charset=utf-8", [orjson.dumps(canned)])
    return _Response(200, "text/plain; charset=utf-8", [b"Ollama is running"])


async def _measure(requests: int, tokens_list: tuple[int, ...]) -> dict[str, Any]:
    from bench.gateway_host import BENCH_KEY, build

    app = build("http://127.0.0.1:9", parallel=64, max_queue=512)
    gateway = app.routes[0].app

    async def fake_open(method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        return _canned(method, path, body if isinstance(body, bytes) else None)

    for backend in gateway.backends:
        backend.open = fake_open

    def request_body(tokens: int) -> bytes:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
            "stream": bool(tokens),
            "options": {"num_predict": tokens or 1},
        }
        return json.dumps(body, separators=(",", ":")).encode()

    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {BENCH_KEY}".encode()),
        (b"user-agent", b"bench"),
    ]
    sent_bodies = 0

    async def one(body: bytes) -> None:
        nonlocal sent_bodies
        received = False
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal sent_bodies
            if message["type"] == "http.response.body":
                sent_bodies += 1

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/llm/api/chat",
            "raw_path": b"/llm/api/chat",
            "root_path": "",
            "query_string": b"",
            "headers": headers + [(b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        await app(scope, receive, send)
        gone.set()
        # Let the loop run what the request left scheduled (the disconnect listener's cancellation),
        # as a server's loop does between requests; otherwise thousands pile up and GC times the heap.
        await asyncio.sleep(0)

    async def timed(body: bytes, count: int) -> float:
        for _ in range(min(200, count)):
            await one(body)
        gc.collect()
        started = time.process_time()
        for _ in range(count):
            await one(body)
        return (time.process_time() - started) / count * 1e6

    out: dict[str, Any] = {}
    small = request_body(0)
    out["request_us"] = statistics.median([await timed(small, requests) for _ in range(3)])
    per_request = {}
    for tokens in tokens_list:
        body = request_body(tokens)
        per_request[tokens] = statistics.median([await timed(body, max(50, requests // 10)) for _ in range(3)])
    out["stream_request_us"] = {str(k): round(v, 2) for k, v in per_request.items()}
    low, high = min(tokens_list), max(tokens_list)
    out["chunk_us"] = (per_request[high] - per_request[low]) / (high - low)
    out["request_us"] = round(out["request_us"], 2)
    out["chunk_us"] = round(out["chunk_us"], 3)
    await gateway.aclose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    parser.add_argument("--package-path", default=None)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args(argv)
    if args.package_path:
        sys.path.insert(0, os.path.abspath(args.package_path))
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(_measure(args.requests, (10, 510)))
    else:
        result = uvloop.run(_measure(args.requests, (10, 510)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
