"""Run the emulator as a real HTTP server (uvicorn) in a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

try:
    import uvicorn
except ImportError as exc:
    raise ImportError(
        "the emulator's server runs on uvicorn, which is not installed: pip install 'ollama-asgi[serve]'"
    ) from exc

from ollama_asgi.testing.emulator import OllamaEmulator
from ollama_asgi.testing.responses import ConnectionDropped

if TYPE_CHECKING:
    from ollama_asgi.testing.gpu import GpuBackend, GpuOptions

__all__ = ["START_TIMEOUT", "STOP_TIMEOUT", "EmulatorServer"]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class _DropInjectedFaults(logging.Filter):
    """Keep uvicorn from logging a traceback for the connection drops tests ask for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


_FILTER = _DropInjectedFaults()


class _Server(uvicorn.Server):
    """Tells the starting thread when the socket is being served."""

    ready: threading.Event | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.ready is not None:
            self.ready.set()


class EmulatorServer:
    """An :class:`OllamaEmulator` on a real loopback port.

    ``port=0`` picks a free port: the socket is bound here and handed to uvicorn, so there is no
    race between choosing the port and listening on it. Use as a context manager or call
    ``start()``/``stop()``; ``kill()`` simulates the process dying and ``restart()`` brings it back
    on the same port with nothing loaded.

    ``gpu=True`` (or a ``GpuOptions``/``GpuBackend``) backs loads with real CUDA memory; see
    ``ollama_asgi.testing.gpu``. Without an explicit ``vram_bytes`` the budget is the device's free memory.
    """

    def __init__(
        self,
        emulator: OllamaEmulator | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        gpu: bool | GpuOptions | GpuBackend = False,
        **emulator_kwargs: Any,
    ) -> None:
        if emulator is not None and emulator_kwargs:
            raise TypeError("pass either an emulator or emulator keyword arguments, not both")
        self.emulator = emulator if emulator is not None else OllamaEmulator(**emulator_kwargs)
        self.gpu: GpuBackend | None = None
        if gpu is not False:
            from ollama_asgi.testing.gpu import attach_gpu

            self.gpu = attach_gpu(self.emulator, gpu, vram_bytes=emulator_kwargs.get("vram_bytes"))
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _Server | None = None
        self._error: BaseException | None = None
        self._serve_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.listen(2048)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        return sock

    def start(self) -> EmulatorServer:
        if self.running:
            return self
        sock = self._bind()
        config = uvicorn.Config(
            self.emulator,
            host=self.host,
            port=self.port,
            loop="asyncio",
            lifespan="on",
            log_level="warning",
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=120,
        )
        logger = logging.getLogger("uvicorn.error")
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        server = _Server(config)
        ready = threading.Event()
        self._server, self._error = server, None
        self._thread = threading.Thread(
            target=self._run, args=(server, sock, ready), name=f"ollama-emulator:{self.port}", daemon=True
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT) or not server.started:
            self._halt(abort=True)
            raise RuntimeError(f"the emulator did not start on {self.url}") from self._error
        return self

    def _run(self, server: _Server, sock: socket.socket, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(server, sock, ready))
        except BaseException as exc:  # reported to start(); a thread must not raise
            self._error = exc
        finally:
            sock.close()
            ready.set()

    async def _serve(self, server: _Server, sock: socket.socket, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        server.ready = ready
        self._serve_task = asyncio.create_task(server.serve(sockets=[sock]))
        await asyncio.wait({self._serve_task})
        if not self._serve_task.cancelled():
            self._serve_task.result()

    def stop(self) -> None:
        """Stop promptly, even with streams open: they are cut and their generation cancelled."""
        self._halt(abort=False)

    def kill(self) -> None:
        """Die abruptly: close the listener, reset every connection, forget loaded models."""
        self._halt(abort=True)
        self.emulator.scheduler.reset()

    def restart(self) -> EmulatorServer:
        """Stop if running, then serve again on the same port."""
        if self.running:
            self.stop()
        return self.start()

    def _halt(self, abort: bool) -> None:
        loop, server, thread = self._loop, self._server, self._thread
        if thread is None:
            return
        if loop is not None and server is not None and thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(server, abort), loop)
            try:
                future.result(STOP_TIMEOUT)
            except Exception:  # the loop may already be closing; the join below decides
                pass
        thread.join(STOP_TIMEOUT)
        self._thread = self._loop = self._server = self._serve_task = None

    async def _shutdown(self, server: _Server, abort: bool) -> None:
        """Close the listener and every connection, end the requests, then stop uvicorn at once.

        uvicorn's own shutdown polls on a 0.1 s tick and sleeps; cancelling its serve task after
        doing the same work here keeps ``stop()`` to a few milliseconds.
        """
        server.should_exit = True
        server.force_exit = True
        for listener in getattr(server, "servers", []):
            listener.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort() if abort else transport.close()
        await self._settle()
        self.emulator.cancel_all()
        await self._settle()
        lifespan = getattr(server, "lifespan", None)
        if not abort and lifespan is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lifespan.shutdown(), STOP_TIMEOUT)
        if self._serve_task is not None:
            self._serve_task.cancel()

    async def _settle(self) -> None:
        """Let in-flight requests see their disconnect and finish (bounded)."""
        for _ in range(100):
            await asyncio.sleep(0.002)
            if not self.emulator.in_progress:
                return
