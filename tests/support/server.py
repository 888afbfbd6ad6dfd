"""Run any ASGI app under uvicorn on a free loopback port, in a thread with its own event loop.

Streaming behaviour (chunk timing, disconnects) only shows over a real socket; httpx's
ASGITransport buffers whole responses.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


class ServerThread:
    def __init__(self, app: Any, *, lifespan: str = "on") -> None:
        self.app = app
        self._lifespan = lifespan
        # IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted sockets, as uvicorn's own binding
        # does; without it every response waits ~40 ms on Nagle and delayed ACKs.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> ServerThread:
        config = uvicorn.Config(
            self.app, loop="asyncio", lifespan=self._lifespan, log_level="warning", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            assert self._server is not None
            self.loop.run_until_complete(self._server.serve(sockets=[self.sock]))
            self.loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"uvicorn-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
