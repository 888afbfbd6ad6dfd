"""The Ollama emulator: an ASGI 3 app that answers like ``ollama serve`` on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from ollama_asgi.testing import management, native, openai_compat
from ollama_asgi.testing.faults import (
    RUNNER_STOPPED,
    EmulatorStats,
    Fault,
    FaultQueue,
    LoadedModelInfo,
    RecordedRequest,
)
from ollama_asgi.testing.generation import ReplyFunction
from ollama_asgi.testing.models import DEFAULT_MODELS, EmulatedModel, ModelStore
from ollama_asgi.testing.responses import JSON, JSON_PLAIN, NDJSON, Chunking, Exchange, Responder
from ollama_asgi.testing.scheduler import Scheduler, SchedulerConfig
from ollama_asgi.testing.wire import BUSY_MESSAGE, ApiError, Options, resolve_options
from ollama_asgi.types import Message, Receive, Scope, Send

Handler = Callable[["OllamaEmulator", Exchange], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    handler: Handler
    openai: bool = False
    inference: bool = False


_INFER = {"inference": True}
ROUTES: dict[str, dict[str, Route]] = {
    "/": {"GET": Route(management.root), "HEAD": Route(management.root)},
    "/api/version": {"GET": Route(management.version), "HEAD": Route(management.version)},
    "/api/tags": {"GET": Route(management.tags), "HEAD": Route(management.tags)},
    "/api/ps": {"GET": Route(management.ps)},
    "/api/generate": {"POST": Route(native.generate, **_INFER)},
    "/api/chat": {"POST": Route(native.chat, **_INFER)},
    "/api/embed": {"POST": Route(native.embed, **_INFER)},
    "/api/embeddings": {"POST": Route(native.embeddings, **_INFER)},
    "/api/show": {"POST": Route(management.show)},
    "/api/copy": {"POST": Route(management.copy)},
    "/api/delete": {"DELETE": Route(management.delete)},
    "/api/pull": {"POST": Route(management.pull)},
    "/api/push": {"POST": Route(management.push)},
    "/api/create": {"POST": Route(management.create)},
    "/v1/chat/completions": {"POST": Route(openai_compat.chat_completions, openai=True, inference=True)},
    "/v1/completions": {"POST": Route(openai_compat.completions, openai=True, inference=True)},
    "/v1/embeddings": {"POST": Route(openai_compat.embeddings, openai=True, inference=True)},
    "/v1/models": {"GET": Route(openai_compat.models, openai=True)},
}
PARAM_ROUTES: tuple[tuple[str, str, dict[str, Route]], ...] = (
    ("/api/blobs/", "digest", {"HEAD": Route(management.head_blob), "POST": Route(management.create_blob)}),
    ("/v1/models/", "model", {"GET": Route(openai_compat.model, openai=True)}),
)

DEFAULT_ORIGINS = tuple(
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for port in ("", ":*")
    for scheme in ("http", "https")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
CORS_ALLOW_HEADERS = (
    "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,OpenAI-Beta,x-stainless-arch,"
    "x-stainless-async,x-stainless-custom-poll-interval,x-stainless-helper-method,x-stainless-lang,"
    "x-stainless-os,x-stainless-package-version,x-stainless-poll-helper,x-stainless-retry-count,"
    "x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout"
)

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


def _match(path: str) -> tuple[dict[str, Route], dict[str, str]] | None:
    if path in ROUTES:
        return ROUTES[path], {}
    for prefix, param, methods in PARAM_ROUTES:
        rest = path[len(prefix) :]
        if path.startswith(prefix) and rest and "/" not in rest:
            return methods, {param: rest}
    return None


class OllamaEmulator:
    """A faithful fake of the Ollama HTTP server, as an ASGI 3 app (``http`` and ``lifespan``).

    Replies are deterministic: the prompt's words repeated to ``num_predict`` (or
    ``default_reply_tokens``) tokens, unless ``reply`` is set. The constructor arguments mirror
    Ollama's environment (``parallel`` is ``OLLAMA_NUM_PARALLEL`` and so on); load time is
    ``load_base_seconds + size / load_bytes_per_second``.
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
        version: str = "0.12.6",
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

        verdict = self._origin_gate(method, headers, responder)
        if verdict != "ok":
            await responder.send(204 if verdict == "preflight" else 403)
            return
        if self.check_host and _loopback_bind(scope) and not _host_allowed(headers.get("host", "")):
            await responder.send(403)
            return
        if method == "OPTIONS" and self.check_host and _loopback_bind(scope):
            await responder.send(204)
            return
        found = _match(path)
        if found is None or method not in found[0]:
            await self._no_route(method, path, found, responder)
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

    def _origin_gate(self, method: str, headers: dict[str, str], responder: Responder) -> str:
        """gin-contrib/cors: "deny" (403), "preflight" (204) or "ok"; adds the CORS headers."""
        origin = headers.get("origin")
        if not origin or not self.check_origin:
            return "ok"
        host = headers.get("host", "")
        if origin in (f"http://{host}", f"https://{host}"):
            return "ok"
        if not _origin_allowed(origin, DEFAULT_ORIGINS + self.allowed_origins):
            return "deny"
        responder.extra_headers.append(("access-control-allow-origin", origin))
        if method == "OPTIONS":
            responder.extra_headers += [
                ("access-control-allow-methods", "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"),
                ("access-control-allow-headers", CORS_ALLOW_HEADERS),
                ("access-control-max-age", "43200"),
                ("vary", "Origin"),
                ("vary", "Access-Control-Request-Method"),
                ("vary", "Access-Control-Request-Headers"),
            ]
            return "preflight"
        responder.extra_headers.append(("vary", "Origin"))
        return "ok"

    async def _no_route(
        self, method: str, path: str, found: tuple[dict[str, Route], dict[str, str]] | None, responder: Responder
    ) -> None:
        """gin: trailing-slash redirect, then 405 with Allow, then 404 (plain-text bodies)."""
        other = path[:-1] if path.endswith("/") and len(path) > 1 else path + "/"
        alternative = _match(other)
        if alternative is not None and method in alternative[0]:
            status = 301 if method == "GET" else 307
            text = "Moved Permanently" if status == 301 else "Temporary Redirect"
            body = f'<a href="{other}">{text}</a>.\n\n'.encode() if method == "GET" else b""
            ctype = "text/html; charset=utf-8" if body else None
            await responder.send(status, body, ctype, headers=[("location", other)])
        elif found is not None:
            allow = ", ".join(sorted(found[0]))
            await responder.send(405, b"405 method not allowed", "text/plain", headers=[("allow", allow)])
        else:
            await responder.send(404, b"404 page not found", "text/plain")

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
        if responder.started:  # cannot change the status any more: an in-stream error line
            if not responder.completed:
                await responder.finish()
            return
        if route.openai:
            body = openai_compat.error_body(exc.status, exc.message)
            if isinstance(exc, openai_compat.MiddlewareError):
                ctype = JSON
            else:
                body, ctype = body + b"\n", JSON_PLAIN
        else:
            body, ctype = orjson.dumps({"error": exc.message}), JSON
        if ex.method == "HEAD":
            await responder.head(exc.status, len(body), ctype)
        else:
            await responder.send(exc.status, body, ctype)


async def _wait_for_disconnect(receive: Receive) -> Message:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return message


def _loopback_bind(scope: Scope) -> bool:
    """Ollama guards the Host header only when it listens on a loopback address."""
    server = scope.get("server")
    if not server or not server[0]:
        return True
    try:
        return ipaddress.ip_address(str(server[0]).strip("[]")).is_loopback
    except ValueError:
        return True  # not an address (an in-process test transport): behave as the default bind


def _host_allowed(host_header: str) -> bool:
    host = host_header.strip()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return address.is_loopback or address.is_private or address.is_unspecified
    host = host.lower()
    if host in ("", "localhost", socket.gethostname().lower()):
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def _origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    for pattern in allowed:
        if pattern == "*" or pattern == origin:
            return True
        if "*" in pattern:
            prefix, _, suffix = pattern.partition("*")
            if origin.startswith(prefix) and origin.endswith(suffix) and len(origin) >= len(pattern) - 1:
                return True
    return False
