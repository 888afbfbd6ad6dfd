"""``OllamaGateway``: the ASGI app a host mounts at ``/llm``.

One request flows forward through small steps: route, authenticate, read the body (size-limited),
parse once, apply policy, pick a backend, relay. Each step either passes the request on or answers
with a ``GatewayError``; nothing after the response started can turn into a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING

import orjson

from ollama_asgi.admission import Admission, hold_prewarms, queue_headers
from ollama_asgi.admit import Admit
from ollama_asgi.affinity import ConversationAffinity, conversation_key
from ollama_asgi.auth import Authorizer, DefaultAuthorizer, call_authorizer
from ollama_asgi.backend import Backend
from ollama_asgi.control import GatewayEndpoints
from ollama_asgi.errors import GatewayError, stream_error_line
from ollama_asgi.gc_tuning import tune_gc
from ollama_asgi.inference import ModelLifecycle
from ollama_asgi.intake import WATCH_AFTER, ClientGone, DisconnectWatcher, Progress, Request, read_body, stream_body
from ollama_asgi.listing import LISTINGS, merged_listing
from ollama_asgi.openai_relay import relay_openai
from ollama_asgi.placement import Placement
from ollama_asgi.policy import Policy
from ollama_asgi.protocol import ParsedRequest, is_cloud_model, parse_request
from ollama_asgi.ratelimit import MemoryRateLimiter
from ollama_asgi.registry import BackendRegistry
from ollama_asgi.relay import RelayResult, SendWatch, relay
from ollama_asgi.responses import send_bytes, send_error
from ollama_asgi.routing import Kind, Route, match_route, route_path
from ollama_asgi.settings import Settings
from ollama_asgi.telemetry import RequestRecord, Telemetry
from ollama_asgi.types import Receive, Scope, Send
from ollama_asgi.upstream import Upstream, UpstreamError, UpstreamResponse

if TYPE_CHECKING:
    from ollama_asgi.state.redis import RedisRateLimiter, RedisState

__all__ = ["OllamaGateway"]

logger = logging.getLogger("ollama_asgi")

# Only these request headers reach Ollama: the host's cookies, Authorization, Origin and Host
# stay behind (Ollama answers a foreign Host or Origin with an empty 403 when bound to loopback).
_FORWARD = frozenset({b"content-type", b"accept", b"user-agent"})
_FORWARD_JSON = _FORWARD - {b"content-type"}  # the gateway re-encodes the body: its own Content-Type
_CLOUD_REFUSED = b'{"cloud":{"disabled":true,"source":"config"}}'  # /api/status where cloud_models refuses


class _Retryable(Exception):
    """The exchange failed before any byte reached the client; another backend may serve it."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


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
            capacities={spec.name: spec.parallel for spec in self.settings.backends if spec.parallel},
            backend_parallel=self.settings.backend_parallel,
        )
        if self.settings.swap_grouping and self.settings.max_loaded_models and self.lifecycle is not None:
            self.admission.configure_turns(self.settings.max_loaded_models, self.settings.swap_max_delay)
            self.admission.load_seconds = self.lifecycle.switch_seconds
            loader = self.lifecycle.loader
            if loader.before_load is not None:
                loader.before_load = hold_prewarms(self.admission, loader.before_load)
            turns = self.admission.turns
            self.lifecycle.wanted = lambda b, m: bool((gate := turns.get(b)) is not None and gate.resident.get(m))
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
        self._admit = Admit(self.settings, self.admission, self.lifecycle, self.policy)
        self.registry = BackendRegistry(
            self.settings,
            backends,
            placement=self.placement,
            admission=self.admission,
            lifecycle=self.lifecycle,
            shared=self.shared_state,
        )
        self.backends = self.registry.upstreams  # the clients telemetry checks, changed in place by the registry
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
        self.shutting_down = False  # set by begin_shutdown(): new and queued requests get 503
        self._drain_timer: asyncio.Task[None] | None = None
        self._relaying: set[UpstreamResponse] = set()  # upstream answers being relayed, ended at the drain timeout
        self._send_watch = SendWatch(self.settings.send_timeout)  # ends relays whose client stopped reading
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
        """Stop taking work: the first step of a graceful shutdown (``ollama-asgi serve`` calls it on SIGTERM).

        New requests and those still queued for a slot are answered 503 with Retry-After, so clients
        retry elsewhere at once; requests in flight run on for up to ``drain_timeout``, after which
        their upstream connections are closed and their streams end with an error line. Health
        answers 503 from now on. Call ``aclose()`` once the server has no connections left.
        """
        if self.shutting_down:
            return
        self.shutting_down = True
        refused = self.admission.close(self._shutdown_error)
        in_flight = sum(pool.in_flight for pool in self.admission.pools.values())
        logger.warning(
            "shutting down: %d queued request(s) refused, %d in flight get up to %gs to finish",
            refused,
            in_flight,
            self.settings.drain_timeout,
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._drain_timer = loop.create_task(self._end_in_flight_after(self.settings.drain_timeout))

    def _shutdown_error(self) -> GatewayError:
        retry = [(b"retry-after", self._retry_after)]
        return GatewayError(503, "the gateway is shutting down; try again", retry, reason="shutdown")

    async def _end_in_flight_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        logger.warning("drain timeout of %gs reached: ending %d relayed answer(s)", seconds, len(self._relaying))
        for resp in list(self._relaying):
            resp.close()  # the relay sees the connection end and closes its stream with an error line
        if self.lifecycle is not None:
            await self.lifecycle.loader.aclose()  # requests waiting for a load get 503 with Retry-After

    async def aclose(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        self._send_watch.close()
        await self.placement.aclose()
        if self.lifecycle is not None:
            await self.lifecycle.aclose()
        await self.registry.aclose()
        await self.admission.aclose()  # shared-lease releases reach Redis before its client closes
        if self.shared_state is not None:
            await self.shared_state.aclose()
        await self.telemetry.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- request path ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The HTTP path is written out here rather than in a helper coroutine: one frame less on
        # every request.
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
            route = record.route = match_route(path)
            if route is None:
                raise GatewayError(404, "404 page not found")
            if method not in route.methods:
                raise GatewayError(405, "405 method not allowed")
            if self.shutting_down and route.kind is not Kind.GATEWAY:
                raise self._shutdown_error()
            if route.kind is Kind.GATEWAY:
                await self._gateway_endpoint(route, scope, receive, record.capture(send), record)
                return
            principal = None
            if route.kind is not Kind.PUBLIC:
                if self._default_authorizer is not None:  # no coroutine for the built-in policy
                    principal = self._default_authorizer.resolve(scope)
                else:
                    principal = await call_authorizer(self._authorize, scope)
                principal = record.principal = self.policy.authorized(principal, route)
                if route.account and not self.settings.cloud_account_routes:
                    raise GatewayError(
                        403,
                        f"{route.name} acts as the Ollama server's ollama.com account, which this gateway does not "
                        "allow (setting cloud_account_routes)",
                    )
                if route.name == "openai_model" and is_cloud_model(name := path[11:]):
                    # Ollama fetches a cloud model's details from ollama.com: the same policy applies.
                    self.policy.check_model(principal, ParsedRequest(body={}, model=name, stream=False, cloud=True))
            if route.streamed_body:
                request = Request(scope, path, route, None, principal, stream_body(receive), head, loop)
                await self._exchange(request, send, progress)
                return
            raw = await read_body(scope, receive, self.settings.max_body_bytes)
            parsed = None
            if route.json_body:
                parsed = record.parsed = parse_request(route, raw, max_num_ctx=self.settings.max_num_ctx)
                if principal is not None:
                    self.policy.check_model(principal, parsed)
                if parsed.rewritten:
                    raw = orjson.dumps(parsed.body)  # upstream gets what was checked, not the client's spelling
            request = Request(scope, path, route, parsed, principal, raw or None, head, loop)
            # The body is read: the next ASGI message can only be http.disconnect. A listener for it
            # starts after WATCH_AFTER (see DisconnectWatcher); written out here, not as a wrapper
            # coroutine, since it is on every request.
            watcher = DisconnectWatcher(receive, progress)
            task = asyncio.current_task(loop)
            assert task is not None
            timer = loop.call_later(WATCH_AFTER, watcher.start, task)
            try:
                await self._exchange(request, send, progress)
            except asyncio.CancelledError:
                if not watcher.gone or task.uncancel() > 0:
                    raise  # cancelled from outside (the server is stopping), not by the listener
            else:
                if watcher.gone:
                    task.uncancel()  # the exchange finished and swallowed the listener's cancellation
            finally:
                timer.cancel()
                watcher.stop()
        except (GatewayError, _Retryable) as caught:
            exc = caught.error if isinstance(caught, _Retryable) else caught
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
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    def _exchange(self, request: Request, send: Send, progress: Progress) -> Coroutine[None, None, None]:
        """The exchange on the chosen backend (the coroutine to await); with several backends, one
        that failed before any byte is retried once elsewhere.

        A single backend has nowhere to retry: its exchange is returned as it is, one coroutine
        less per request; its ``_Retryable`` reaches ``__call__``, which answers with the error.
        """
        self.placement.start()
        if self.shared_state is not None:
            self.registry.start_sync()
        principal = request.principal
        restricted = principal is not None and (
            principal.models is not None
            or self.settings.allowed_models is not None
            or not self.policy.cloud_allowed(principal)  # Ollama lists cloud models; this caller may not use them
        )
        several = len(self.placement.backends) > 1
        if request.route.name in LISTINGS and (several or restricted) and not request.head:
            return merged_listing(
                request, send, progress, placement=self.placement, policy=self.policy, retry_after=self._retry_after
            )
        if request.route.name == "cloud_status" and principal is not None and not self.policy.cloud_allowed(principal):
            # What Ollama says with cloud off: this caller's cloud requests never leave the gateway.
            return send_bytes(progress.record.capture(send), 200, _CLOUD_REFUSED, head=request.head)
        model = request.parsed.model if request.parsed is not None else None
        if not several:
            return self._exchange_on(self.placement.choose(model), request, send, progress)
        return self._exchange_retrying(model, request, send, progress)

    async def _exchange_retrying(self, model: str | None, request: Request, send: Send, progress: Progress) -> None:
        tried: set[str] = set()
        conversations = self.placement.conversations
        conversation = None
        if conversations is not None and model is not None and request.parsed is not None:
            conversation = conversation_key(request.parsed.body, model)
        while True:
            excluded = frozenset(tried) if tried else _NONE
            backend = self.placement.choose(model, exclude=excluded, conversation=conversation)
            if conversation is not None and conversations is not None:
                conversations.served(conversation.key, backend.name)
            try:
                await self._exchange_on(backend, request, send, progress)
                return
            except _Retryable as exc:
                tried.add(backend.name)
                retry = (
                    len(tried) < 2
                    and not progress.started
                    and not request.route.streamed_body
                    and len(tried) < len(self.placement.backends)
                )
                if not retry:
                    raise exc.error from exc.error.__cause__
                logger.warning("retrying on another backend after %s failed: %s", backend.name, exc.error.message)

    async def _exchange_on(self, chosen: Backend, request: Request, send: Send, progress: Progress) -> None:
        backend = chosen.upstream
        scope = request.scope
        principal = request.principal
        path = request.path
        body = request.body
        record = progress.record
        record.backend = backend.name
        extra: list[tuple[bytes, bytes]] = [record.id_header]
        lease = prepared = None
        if (
            request.route.kind is Kind.INFERENCE
            and principal is not None
            and request.parsed is not None
            and request.parsed.cloud
        ):
            # Run on ollama.com, not in one of Ollama's runner slots: rate limits apply, no slot is taken.
            if not request.rate_checked and self.policy.rate_limited(principal):
                request.rate_checked = True
                await self.policy.check_rate(principal)
        elif request.route.kind is Kind.INFERENCE and principal is not None:
            try:
                lease, prepared = self._admit.take_slot_now(request, backend)
                if lease is None:
                    lease, prepared = await self._admit.before_upstream(request, backend, send, progress, prepared)
            except UpstreamError as exc:
                self.placement.record_failure(chosen, str(exc))
                raise _Retryable(self._upstream_failure(backend, exc)) from exc
        if prepared is not None:
            path, body = prepared.path, prepared.body
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k in _FORWARD_JSON]
            headers.append(("Content-Type", "application/json"))
            if prepared.truncated:
                extra.append((b"x-context-truncated", str(prepared.truncated).encode()))
            if self.lifecycle is not None:
                self.lifecycle.begin(prepared)
        else:
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k in _FORWARD]
        if lease is not None and lease.queued_for:
            extra.extend(queue_headers(lease.queued_for, lease.position))
        ok = False
        try:
            try:
                resp = await backend.open(
                    scope["method"],
                    path,
                    query=scope.get("query_string", b""),
                    headers=headers,
                    body=body,
                    loop=request.loop,
                )
            except UpstreamError as exc:
                self.placement.record_failure(chosen, str(exc))
                raise _Retryable(self._upstream_failure(backend, exc)) from exc
            record.responded(lease)
            if resp.status == 503 and "Retry-After" not in resp.headers:
                extra.append((b"retry-after", self._retry_after))  # Ollama's "server busy" names no time
            self._relaying.add(resp)
            try:
                if prepared is not None and prepared.openai_route is not None:
                    relaying = relay_openai(resp, send, prepared, started=progress.started, extra_headers=extra)
                else:
                    relaying = relay(
                        resp,
                        send,
                        head=request.head,
                        started=progress.started,
                        extra_headers=extra,
                        expect_final=request.route.name in ("generate", "chat"),
                    )
                sender: asyncio.Future[RelayResult] | asyncio.Task[object] | None
                if isinstance(relaying, asyncio.Future):
                    progress.relaying = sender = relaying
                else:
                    sender = asyncio.current_task(request.loop)
                if sender is not None:
                    self._send_watch.watch(resp, sender)
                try:
                    result = await relaying
                except asyncio.CancelledError:
                    if not self._send_watch.done(resp):
                        raise
                    if isinstance(sender, asyncio.Task) and sender is not progress.relaying:
                        sender.uncancel()  # the watch cancelled this task's send, nobody else did
                    result = _stalled(resp.status, self.settings.send_timeout)
            finally:
                resp.close()
                self._relaying.discard(resp)
                self._send_watch.done(resp)
            record.result = result
            ok = result.error is None and result.status < 500
            if request.route.name in _STORE_CHANGES and result.status < 400:
                self._store_changed(backend, request.route, request.parsed)
            # The breaker counts what says the backend is broken: a failed connection or Ollama's own
            # 5xx (503 is Ollama saying "busy"). What a stream carried is not the backend's health:
            # one user's odd streams must not shut everyone out.
            if result.broken:
                self.placement.record_failure(chosen, result.error or "the connection broke")
            elif result.status >= 500 and result.status != 503 and not _request_refused(result.final):
                self.placement.record_failure(chosen, f"answered {result.status}")
            else:
                self.placement.record_success(chosen)
        finally:
            if lease is not None:
                lease.release(ok=ok)
            if prepared is not None and self.lifecycle is not None:
                self.lifecycle.end(prepared)
        if principal is not None and request.route.kind is Kind.INFERENCE:
            tpm = principal.tokens_per_minute or self.settings.rate_limit_tpm
            if tpm:
                await self.rate_limiter.charge_tokens(principal.id, tpm, record.usage().total)

    def _store_changed(self, backend: Upstream, route: Route, parsed: ParsedRequest | None) -> None:
        """A pull, create, copy or delete went through: what was cached of that model there is stale."""
        models = self.lifecycle.models.get(backend.name) if self.lifecycle is not None else None
        if models is None or parsed is None:
            return
        name = parsed.body.get(_STORE_CHANGES[route.name]) or parsed.model
        if isinstance(name, str) and name:
            models.forget(name)

    def _upstream_failure(self, backend: Upstream, exc: UpstreamError) -> GatewayError:
        logger.warning("upstream %s failed before answering: %s", backend.name, exc)
        if exc.kind == "timeout":
            error = GatewayError(504, str(exc))
        else:
            error = GatewayError(503, str(exc), [(b"retry-after", self._retry_after)])
        error.__cause__ = exc  # telemetry tells an unreachable upstream from other 503s by this
        return error

    async def _gateway_endpoint(
        self, route: Route, scope: Scope, receive: Receive, send: Send, record: RequestRecord
    ) -> None:
        if route.name == "backends":
            await self._endpoints.backends(scope, receive, send)
        elif route.name == "queue":
            await self._endpoints.queue(scope, send)
        elif route.name == "health":
            await self._endpoints.health(scope, send, shutting_down=self.shutting_down)
        else:  # status and metrics: the telemetry module checks who may see them
            await self.telemetry.endpoint(route.name, scope, send, record, self._authorize)


# Routes that change a backend's model store, and the body key naming the model they change.
_STORE_CHANGES = {"pull": "model", "create": "model", "delete": "model", "copy": "destination"}
_NONE: frozenset[str] = frozenset()
# What Ollama answers with a 500 when it cannot read a request (a format or schema it rejects, an
# option of the wrong type): the request's fault, not the backend's, so the breaker does not count it.
_REFUSALS = (b'"invalid format', b'"invalid JSON schema', b'"option \\"')


def _stalled(status: int, timeout: float) -> RelayResult:
    """The result of a relay ended because its client took no bytes for ``timeout`` seconds.

    The response cannot be finished (the client reads nothing), so the app returns without it and
    the server closes the connection.
    """
    error = f"the client read nothing for {timeout:g}s (send_timeout); the request was ended"
    return RelayResult(status, 0, None, error, stalled=True)


def _request_refused(body: bytes | None) -> bool:
    return body is not None and len(body) < 4096 and any(refusal in body for refusal in _REFUSALS)
