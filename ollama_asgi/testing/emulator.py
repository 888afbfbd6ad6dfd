"""The Ollama emulator: an ASGI 3 app that answers like ``ollama serve`` on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

import orjson

from ollama_asgi.testing import guards, openai_compat, routes
from ollama_asgi.testing.faults import RUNNER_STOPPED, Fault, FaultQueue
from ollama_asgi.testing.generation import ReplyFunction
from ollama_asgi.testing.models import DEFAULT_MODELS, EmulatedModel, ModelStore
from ollama_asgi.testing.records import EmulatorStats, LoadedModelInfo, RecordedRequest
from ollama_asgi.testing.responses import JSON, JSON_PLAIN, NDJSON, Chunking, Exchange, Responder, ndjson_error_line
from ollama_asgi.testing.routes import Route
from ollama_asgi.testing.scheduler import Scheduler, SchedulerConfig
from ollama_asgi.testing.wire import (
    BUSY_MESSAGE,
    EMULATED_VERSION,
    ApiError,
    Options,
    StreamStartError,
    resolve_options,
)
from ollama_asgi.types import Message, Receive, Scope, Send

__all__ = ["OllamaEmulator"]

T = TypeVar("T")


class _Config(Generic[T]):
    """An emulator attribute that lives in the scheduler's config, so changing it takes effect."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: OllamaEmulator, objtype: type | None = None) -> T:
        value: T = getattr(obj.scheduler.config, self.name)
        return value

    def __set__(self, obj: OllamaEmulator, value: T) -> None:
        setattr(obj.scheduler.config, self.name, value)


class OllamaEmulator:
    """A faithful fake of the Ollama HTTP server, as an ASGI 3 app (``http`` and ``lifespan``).

    Replies are deterministic: the prompt's words repeated to ``num_predict`` (or
    ``default_reply_tokens``) tokens, unless ``reply`` is set. Most settings mirror Ollama's
    environment and can be changed while running:

    - ``models``: the local store (``/api/tags``); ``registry``: what ``/api/pull`` can fetch.
    - ``parallel`` (``OLLAMA_NUM_PARALLEL``), ``max_queue`` (``OLLAMA_MAX_QUEUE``),
      ``max_loaded_models`` (``OLLAMA_MAX_LOADED_MODELS``, 0 = 3), ``default_num_ctx``
      (``OLLAMA_CONTEXT_LENGTH``, 0 = by memory), ``default_keep_alive`` (``OLLAMA_KEEP_ALIVE``,
      seconds, negative = forever).
    - ``vram_bytes``: the memory loaded models must fit in (see ``EmulatedModel.memory_bytes``).
    - Load time is ``load_base_seconds + size / load_bytes_per_second``; ``token_interval`` is
      the pause before each streamed token.
    - ``check_host`` / ``check_origin``: Ollama's Host and CORS 403s (``allowed_origins`` adds
      to the defaults, like ``OLLAMA_ORIGINS``); ``chunking``: how lines map to body messages.
    """

    parallel = _Config[int]()
    max_queue = _Config[int]()
    max_loaded_models = _Config[int]()
    vram_bytes = _Config[int]()
    default_keep_alive = _Config[float]()
    load_base_seconds = _Config[float]()
    load_bytes_per_second = _Config[float]()

    def __init__(
        self,
        models: Iterable[EmulatedModel] = DEFAULT_MODELS,
        registry: Iterable[EmulatedModel] | None = None,
        *,
        parallel: int = 1,
        max_queue: int = 512,
        max_loaded_models: int = 3,
        vram_bytes: int = 24 * 2**30,
        default_num_ctx: int = 4096,
        default_keep_alive: float = 300.0,
        load_base_seconds: float = 0.0,
        load_bytes_per_second: float = math.inf,
        token_interval: float = 0.0,
        default_reply_tokens: int = 8,
        version: str = EMULATED_VERSION,
        check_host: bool = True,
        check_origin: bool = True,
        allowed_origins: Sequence[str] = (),
        chunking: Chunking = "line",
    ) -> None:
        if chunking not in ("line", "split", "coalesce"):
            raise ValueError("chunking must be 'line', 'split' or 'coalesce'")
        self.stats = EmulatorStats()
        config = SchedulerConfig(
            parallel=parallel,
            max_queue=max_queue,
            max_loaded_models=max_loaded_models,
            vram_bytes=vram_bytes,
            default_keep_alive=math.inf if default_keep_alive < 0 else default_keep_alive,
            load_base_seconds=load_base_seconds,
            load_bytes_per_second=load_bytes_per_second,
        )
        self.scheduler = Scheduler(config, self.stats)
        self.store = ModelStore(models)
        self.registry = ModelStore(DEFAULT_MODELS if registry is None else registry)
        self.blobs: dict[str, int] = {f"sha256:{e.model.digest}": e.model.size for e in [*self.store, *self.registry]}
        self.default_num_ctx = default_num_ctx
        self.token_interval = token_interval
        self.default_reply_tokens = default_reply_tokens
        self.version = version
        self.check_host = check_host
        self.check_origin = check_origin
        self.allowed_origins = tuple(allowed_origins)
        self.chunking: Chunking = chunking
        self.reply: ReplyFunction | None = None
        self.requests: list[RecordedRequest] = []
        self._faults = FaultQueue()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ test controls

    def inject(self, fault: Fault, times: int | None = 1) -> Fault:
        """Arm ``fault`` for the next ``times`` matching requests (``None``: until cleared)."""
        self._faults.add(fault, times)
        return fault

    def clear_faults(self) -> None:
        self._faults.clear()

    def clear(self) -> None:
        """Forget recorded requests and zero the counters; the store and loaded models stay."""
        self.requests.clear()
        self.stats.reset()

    def loaded_models(self) -> dict[str, LoadedModelInfo]:
        return {runner.model.name: runner.info() for runner in self.scheduler.loaded()}

    def cancel_all(self) -> None:
        """Stop every request in progress (the server is going away)."""
        for task in list(self._tasks):
            task.cancel()

    @property
    def in_progress(self) -> int:
        return len(self._tasks)

    # ------------------------------------------------------------------ used by the routes

    def lookup(self, name: str) -> EmulatedModel | None:
        return self.store.get(name)

    @property
    def effective_num_ctx(self) -> int:
        """``OLLAMA_CONTEXT_LENGTH``; 0 picks by memory as Ollama 0.15.5+ does."""
        if self.default_num_ctx > 0:
            return self.default_num_ctx
        gib = self.vram_bytes / 2**30
        return 4096 if gib < 24 else 32768 if gib < 48 else 262144

    def options_for(self, model: EmulatedModel, requested: dict[str, Any] | None) -> Options:
        return resolve_options(self.effective_num_ctx, model.parameters, requested)

    def interval_for(self, ex: Exchange) -> float:
        fault = ex.fault
        return fault.delay if fault is not None and fault.kind == "slow" else self.token_interval

    async def pace(self, ex: Exchange) -> None:
        await asyncio.sleep(self.interval_for(ex))

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        try:
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.scheduler.bind()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.cancel_all()
                    self.scheduler.reset()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        except asyncio.CancelledError:
            # Torn down without a shutdown event (a killed or force-exited server): nothing to
            # report to, and the loop is going away, so end quietly.
            self.cancel_all()
            self.scheduler.reset()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scheduler.bind()
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        headers: dict[str, str] = {}
        for raw_key, raw_value in scope.get("headers", []):
            key, value = raw_key.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        method, path = scope["method"].upper(), scope["path"]
        parsed: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(body) if body else None
        query = scope.get("query_string", b"").decode("latin-1")
        self.requests.append(RecordedRequest(method, path, query, headers, body, parsed, time.monotonic()))
        responder = Responder(send, chunking=self.chunking)

        if self.check_origin:
            verdict, cors_headers = guards.cors(method, headers, self.allowed_origins)
            responder.extra_headers += cors_headers
            if verdict != "ok":
                await responder.send(204 if verdict == "preflight" else 403)
                return
        if self.check_host and guards.loopback_bind(scope):
            if not guards.host_allowed(headers.get("host", "")):
                await responder.send(403)
                return
            if method == "OPTIONS":
                await responder.send(204)
                return
        found = routes.match(path)
        if found is None or method not in found[0]:
            await routes.no_route(method, path, found, responder)
            return
        route = found[0][method]
        fault = self._faults.take(method, path)
        responder.fault = fault
        ex = Exchange(
            method=method,
            path=path,
            params=found[1],
            headers=headers,
            body=body,
            responder=responder,
            fault=fault,
            started_ns=time.perf_counter_ns(),
        )
        await self._exchange(ex, route, receive)

    async def _exchange(self, ex: Exchange, route: Route, receive: Receive) -> None:
        """Run the route in a task that a client disconnect cancels at once."""
        task = asyncio.create_task(self._serve(ex, route))
        self._tasks.add(task)
        watcher = asyncio.create_task(_wait_for_disconnect(receive))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and not ex.responder.completed:
                task.cancel()
                if route.inference:
                    self.stats.cancellations += 1
                await asyncio.wait({task})
                if not task.cancelled():
                    task.exception()  # retrieved: the client is gone, nobody to tell
                return
            await asyncio.wait({task})
            if not task.cancelled():
                task.result()  # re-raises ConnectionDropped so the server drops the socket
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
            self._tasks.discard(task)

    async def _serve(self, ex: Exchange, route: Route) -> None:
        fault = ex.fault
        try:
            if fault is not None and fault.kind == "hang_headers":
                await asyncio.sleep(fault.delay)
            if fault is not None and fault.kind in ("http_error", "busy"):
                if fault.kind == "busy":
                    self.stats.rejected_busy += 1
                    raise ApiError(503, BUSY_MESSAGE)
                raise ApiError(fault.status, fault.message)
            if fault is not None and fault.kind == "garbage":
                text = fault.message if fault.message not in ("", RUNNER_STOPPED) else "<html>not json</html>"
                body = text.encode()
                ctype = NDJSON if route.inference and not route.openai else JSON
                await ex.responder.send(200, body + b"\n", ctype)
                return
            await route.handler(self, ex)
        except ApiError as exc:
            await self._send_error(ex, route, exc)

    async def _send_error(self, ex: Exchange, route: Route, exc: ApiError) -> None:
        responder = ex.responder
        if responder.started:  # too late for a status: an in-stream error line, as streamResponse does
            await responder.finish(b"" if route.openai else ndjson_error_line(exc.message))
            return
        if route.openai:
            body = openai_compat.error_body(exc.status, exc.message)
            if isinstance(exc, openai_compat.MiddlewareError):
                ctype = JSON
            else:
                body, ctype = body + b"\n", JSON_PLAIN
        else:
            body = orjson.dumps({"error": exc.message})
            ctype = JSON_PLAIN if isinstance(exc, StreamStartError) else JSON
        if ex.method == "HEAD":
            await responder.head(exc.status, len(body), ctype)
        else:
            await responder.send(exc.status, body, ctype)


async def _wait_for_disconnect(receive: Receive) -> Message:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return message
