"""``OllamaGateway``: the ASGI app a host mounts at ``/llm``.

The gateway builds its parts from the settings and passes each request forward through the stages
that use them: route, authenticate, policy, read the body (size-limited) and parse it once, then
the exchange with a backend (``exchange``). Each stage either passes the request on or answers with
a ``GatewayError``; nothing after the response started can turn into a 500. Stopping is
``shutdown``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING

import orjson

from ollama_asgi.admission import Admission, hold_prewarms
from ollama_asgi.admit import Admit
from ollama_asgi.affinity import ConversationAffinity
from ollama_asgi.auth import Authorizer, DefaultAuthorizer, call_authorizer
from ollama_asgi.backend import Backend
from ollama_asgi.control import GatewayEndpoints
from ollama_asgi.errors import GatewayError, stream_error_line
from ollama_asgi.exchange import Exchange, Retryable
from ollama_asgi.gc_tuning import tune_gc
from ollama_asgi.inference import ModelLifecycle
from ollama_asgi.intake import WATCH_AFTER, ClientGone, DisconnectWatcher, Progress, Request, read_body, stream_body
from ollama_asgi.placement import Placement
from ollama_asgi.policy import Policy
from ollama_asgi.protocol import parse_request
from ollama_asgi.ratelimit import MemoryRateLimiter
from ollama_asgi.registry import BackendRegistry
from ollama_asgi.responses import send_error
from ollama_asgi.routing import Kind, Route, match_route, route_path
from ollama_asgi.settings import Settings
from ollama_asgi.shutdown import Drain, serve_lifespan
from ollama_asgi.telemetry import RequestRecord, Telemetry
from ollama_asgi.types import Receive, Scope, Send

if TYPE_CHECKING:
    from ollama_asgi.slots import BackendSlots
    from ollama_asgi.state.redis import RedisRateLimiter, RedisState

__all__ = ["OllamaGateway"]


class OllamaGateway:
    """An ASGI 3 app serving Ollama's native API, the OpenAI-compatible API and ``/_gateway/*``.

    Args:
        settings: The configuration; ``Settings.from_env()`` when omitted.
        authorize: Replaces the default policy: ``authorize(scope)`` returns the ``Principal`` (or an
            awaitable of one) for a request, or None to answer 401.
    """

    def __init__(self, settings: Settings | None = None, *, authorize: Authorizer | None = None) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self._authorize: Authorizer = authorize or DefaultAuthorizer(self.settings)
        self._default_authorizer = self._authorize if type(self._authorize) is DefaultAuthorizer else None
        backends = [Backend.from_spec(spec, self.settings) for spec in self.settings.backends]
        self._retry_after = str(max(1, math.ceil(self.settings.upstream_retry_after))).encode()
        self.shared_state: RedisState | None = None
        self.rate_limiter: MemoryRateLimiter | RedisRateLimiter = MemoryRateLimiter()
        if self.settings.redis_url:
            from ollama_asgi.state.redis import RedisRateLimiter, RedisState

            self.shared_state = RedisState(
                self.settings.redis_url, prefix=self.settings.redis_prefix, lease_ttl=self.settings.lease_ttl
            )
            self.rate_limiter = RedisRateLimiter(self.shared_state, fallback=self.rate_limiter)
        self.policy = Policy(self.settings, self.rate_limiter)
        self.lifecycle: ModelLifecycle | None = None
        if self.settings.lifecycle:
            lock = None
            if self.shared_state is not None:
                from ollama_asgi.state.redis import RedisLoadLock

                lock = RedisLoadLock(self.shared_state)
            self.lifecycle = ModelLifecycle(self.settings, backends, lock=lock)
        self.admission = Admission(
            parallel=self.settings.parallel,
            embed_parallel=self.settings.embed_parallel,
            max_queue=self.settings.max_queue,
            shared=self.shared_state,
            fail_open=self.settings.redis_fail_open,
            backend_parallel=self.settings.backend_parallel,
        )
        if self.settings.swap_grouping and self.settings.max_loaded_models and self.lifecycle is not None:
            self.admission.configure_turns(self.settings.max_loaded_models, self.settings.swap_max_delay)
            self.admission.load_seconds = self.lifecycle.switch_seconds
            loader = self.lifecycle.loader
            slots_of = partial(_slots_of, backends)
            if loader.before_load is not None:
                loader.before_load = hold_prewarms(self.admission, slots_of, loader.before_load)
            self.lifecycle.wanted = lambda b, m: bool(
                (slots := slots_of(b)) is not None and (gate := slots.turns) is not None and gate.resident.get(m)
            )
        conversations = None
        if self.settings.conversation_affinity:
            conversations = ConversationAffinity(self.settings.conversation_wait)
        self.placement = Placement(
            backends,
            failures_to_open=self.settings.breaker_failures,
            cooldown=self.settings.breaker_cooldown,
            spill_wait=self.settings.spill_wait,
            strategy=self.settings.placement,
            health_interval=self.settings.health_interval,
            admission=self.admission,
            lifecycle=self.lifecycle,
            conversations=conversations,
        )
        self.registry = BackendRegistry(
            self.settings,
            backends,
            placement=self.placement,
            lifecycle=self.lifecycle,
            shared=self.shared_state,
        )
        self.backends = self.registry.upstreams  # the clients telemetry checks, changed in place by the registry
        self._exchange = Exchange(
            self.settings,
            placement=self.placement,
            registry=self.registry,
            policy=self.policy,
            admit=Admit(self.settings, self.admission, self.lifecycle, self.policy),
            lifecycle=self.lifecycle,
            shared=self.shared_state is not None,
            retry_after=self._retry_after,
        )
        self._endpoints = GatewayEndpoints(
            self.settings,
            registry=self.registry,
            placement=self.placement,
            admission=self.admission,
            shared=self.shared_state,
            authorize=self._authorize,
            retry_after=self._retry_after,
        )
        self.telemetry = Telemetry(self)
        self._drain = Drain(
            self.settings,
            admission=self.admission,
            backends=backends,
            lifecycle=self.lifecycle,
            relaying=self._exchange.relaying,
            retry_after=self._retry_after,
        )
        self._gc_pending = self.settings.tune_gc  # done at the first request, once the host app is built

    # -- lifecycle -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Compose into a host's lifespan (``Starlette(lifespan=gateway.lifespan)``) to close cleanly."""
        try:
            yield
        finally:
            await self.aclose()

    def begin_shutdown(self) -> None:
        """Stop taking work, the first step of a graceful shutdown (``ollama-asgi serve`` calls it on
        SIGTERM): new and queued requests get 503 with Retry-After, requests in flight run on for up
        to ``drain_timeout`` (``shutdown.Drain``). Call ``aclose()`` once no connections are left."""
        self._drain.begin()

    @property
    def shutting_down(self) -> bool:
        """Set by ``begin_shutdown()``: new and queued requests get 503."""
        return self._drain.begun

    async def aclose(self) -> None:
        self._drain.cancel()
        self._exchange.close()
        await self.placement.aclose()
        if self.lifecycle is not None:
            await self.lifecycle.aclose()
        await self.registry.aclose()
        await self.admission.aclose()  # shared-lease releases reach Redis before its client closes
        if self.shared_state is not None:
            await self.shared_state.aclose()
        await self.telemetry.aclose()

    # -- request path ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One request through its stages, in order, each a call into the module that owns it: route,
        authenticate, policy, read and parse (intake), then the exchange with a backend (exchange:
        place, plan, load, admit, relay, record), noted once at the end (telemetry). A stage passes
        the request on or raises the ``GatewayError`` answered here. Written out, not in a helper
        coroutine: one frame less on every request."""
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        if self._gc_pending:
            self._gc_pending = False
            tune_gc()
        # Asked once: CPython 3.11 makes a getpid() system call on every get_running_loop().
        loop = asyncio.get_running_loop()
        path = route_path(scope)
        method: str = scope["method"]
        openai = path.startswith("/v1/")
        anthropic = path == "/v1/messages"  # errors in Anthropic's shape, as its clients read them
        head = method == "HEAD"
        record = self.telemetry.begin(scope, loop)
        progress = Progress(record)
        try:
            # route
            route = record.route = match_route(path)
            if route is None:
                raise GatewayError(404, "404 page not found")
            if method not in route.methods:
                raise GatewayError(405, "405 method not allowed")
            if route.kind is Kind.GATEWAY:  # the gateway's own answers, during a shutdown too
                await self._gateway_endpoint(route, scope, receive, record.capture(send), record)
                return
            if self._drain.begun:
                raise self._drain.error()
            # authenticate, then policy: may this caller call this route
            principal = None
            if route.kind is not Kind.PUBLIC:
                if self._default_authorizer is not None:  # no coroutine for the built-in policy
                    principal = self._default_authorizer.resolve(scope)
                else:
                    principal = await call_authorizer(self._authorize, scope)
                principal = record.principal = self.policy.authorized(principal, route)
                self.policy.check_route(principal, route, path)
            if route.streamed_body:  # an upload, relayed to a backend as it arrives
                request = Request(scope, path, route, None, principal, stream_body(receive), head, loop)
                await self._exchange.start(request, send, progress)
                return
            # read and parse, then policy: may this caller use this model
            raw = await read_body(scope, receive, self.settings.max_body_bytes)
            parsed = None
            if route.json_body:
                parsed = record.parsed = parse_request(route, raw, max_num_ctx=self.settings.max_num_ctx)
                if principal is not None:
                    self.policy.check_model(principal, parsed)
                if parsed.rewritten:
                    raw = orjson.dumps(parsed.body)  # upstream gets what was checked, not the client's spelling
            request = Request(scope, path, route, parsed, principal, raw or None, head, loop)
            # exchange: place, plan, load, admit, relay, record, ended when the client leaves.
            # The body is read: the next ASGI message can only be http.disconnect. A listener for it
            # starts after WATCH_AFTER (see DisconnectWatcher); written out here, not as a wrapper
            # coroutine, since it is on every request.
            watcher = DisconnectWatcher(receive, progress)
            task = asyncio.current_task(loop)
            assert task is not None
            timer = loop.call_later(WATCH_AFTER, watcher.start, task)
            try:
                await self._exchange.start(request, send, progress)
            except asyncio.CancelledError:
                if not watcher.gone or task.uncancel() > 0:
                    raise  # cancelled from outside (the server is stopping), not by the listener
            else:
                if watcher.gone:
                    task.uncancel()  # the exchange finished and swallowed the listener's cancellation
            finally:
                timer.cancel()
                watcher.stop()
        except (GatewayError, Retryable) as caught:
            exc = caught.error if isinstance(caught, Retryable) else caught
            record.error = exc
            if progress.started:
                tail = stream_error_line(exc.message, sse=True, anthropic=anthropic, status=exc.status)
                await send({"type": "http.response.body", "body": tail, "more_body": False})
            else:
                await send_error(record.capture(send), exc, openai=openai, anthropic=anthropic, head=head)
        except ClientGone:
            return
        finally:
            self.telemetry.end(record)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send, self.aclose)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _gateway_endpoint(
        self, route: Route, scope: Scope, receive: Receive, send: Send, record: RequestRecord
    ) -> None:
        if route.name == "backends":
            await self._endpoints.backends(scope, receive, send)
        elif route.name == "queue":
            await self._endpoints.queue(scope, send)
        elif route.name == "health":
            await self._endpoints.health(scope, send, shutting_down=self._drain.begun)
        else:  # status and metrics: the telemetry module checks who may see them
            await self.telemetry.endpoint(route.name, scope, send, record, self._authorize)


def _slots_of(backends: list[Backend], name: str) -> BackendSlots | None:
    """The slots of the backend named ``name`` in service now (the registry changes the list in place)."""
    return next((backend.slots for backend in backends if backend.name == name), None)
