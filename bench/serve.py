"""Start one benchmark server in the foreground: ``python -m bench.serve KIND --port P [...]``.

Every Python server runs on uvicorn with one worker, uvloop and httptools where installed, no
access log. Kinds: ``emulator`` (the Ollama emulator, fast by default, with a ``/_bench/*`` side
door for timestamps and counters), ``plain-httpx``, ``plain-aiohttp`` and ``gateway``.
``--package-path DIR`` imports ``ollama_asgi`` from DIR (a baseline copy) instead of the checkout.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import time
from typing import Any


def _uvicorn_options() -> dict[str, Any]:
    options: dict[str, Any] = {"loop": "asyncio", "http": "h11"}
    try:
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    except ImportError:
        pass
    try:
        import httptools  # noqa: F401

        options["http"] = "httptools"
    except ImportError:
        pass
    return options


class Timeline:
    """Wraps the emulator: records when each request arrived and when its answer ended.

    ``GET /_bench/timeline`` returns ``[[path, arrived, ended], ...]`` (``time.monotonic()``, which
    is one clock for all processes on Linux); ``GET /_bench/stats`` the emulator's counters.
    """

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator
        self.events: collections.deque[tuple[str, float, float]] = collections.deque(maxlen=100_000)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.emulator(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith("/_bench/"):
            await self._side_door(path, send)
            return
        arrived = time.monotonic()

        async def timed_send(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.events.append((path, arrived, time.monotonic()))

        await self.emulator(scope, receive, timed_send)

    async def _side_door(self, path: str, send: Any) -> None:
        import dataclasses

        import orjson

        if path == "/_bench/timeline":
            body = orjson.dumps(list(self.events))
        elif path == "/_bench/stats":
            body = orjson.dumps(dataclasses.asdict(self.emulator.stats))
        else:
            body = b"{}"
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _emulator(args: argparse.Namespace) -> Any:
    from ollama_asgi.testing.cli import add_emulate_arguments, build_emulator

    parser = argparse.ArgumentParser()
    add_emulate_arguments(parser)
    options = ["--fast", "--parallel", str(args.parallel), "--max-queue", str(args.max_queue)]
    if args.token_interval is not None:
        options += ["--token-interval", str(args.token_interval)]
    if args.load_seconds is not None:
        options += ["--load-seconds", str(args.load_seconds)]
    emulator = build_emulator(parser.parse_args(options))
    # The emulator keeps every request for tests; a benchmark sends hundreds of thousands.
    emulator.requests = collections.deque(maxlen=1000)  # type: ignore[assignment]
    return Timeline(emulator)


def build_app(args: argparse.Namespace) -> Any:
    if args.kind == "emulator":
        return _emulator(args)
    if args.kind in ("plain-httpx", "plain-aiohttp"):
        os.environ["BENCH_UPSTREAM"] = args.upstream
        if args.kind == "plain-httpx":
            from bench.plain_proxy_httpx import app
        else:
            from bench.plain_proxy_aiohttp import app
        return app
    if args.kind == "gateway":
        from bench.gateway_host import build

        return build(args.upstream, parallel=args.parallel, max_queue=args.max_queue, queue_timeout=args.queue_timeout)
    raise SystemExit(f"unknown kind {args.kind!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("kind", choices=("emulator", "plain-httpx", "plain-aiohttp", "gateway"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default="http://127.0.0.1:11434")
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--max-queue", type=int, default=512)
    parser.add_argument("--queue-timeout", type=float, default=30.0)
    parser.add_argument("--token-interval", type=float, default=None)
    parser.add_argument("--load-seconds", type=float, default=None)
    parser.add_argument("--package-path", default=None, help="import ollama_asgi from this directory")
    parser.add_argument(
        "--gc",
        choices=("default", "tuned"),
        default="default",
        help="tuned: freeze startup objects and raise the young-generation threshold once the app is built",
    )
    args = parser.parse_args(argv)
    if args.package_path:
        sys.path.insert(0, os.path.abspath(args.package_path))
    import uvicorn

    app = build_app(args)
    if args.gc == "tuned":
        # What ollama_asgi.gc_tuning.tune_gc does, written out so every Python hop (and a baseline
        # copy of the package that predates that module) gets exactly the same settings.
        gc.freeze()
        gc.set_threshold(10_000, *gc.get_threshold()[1:])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        workers=None,
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        backlog=4096,
        timeout_keep_alive=60,
        **_uvicorn_options(),
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
