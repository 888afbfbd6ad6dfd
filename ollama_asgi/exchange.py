"""The exchange with a backend: place, plan, load, admit, relay and record, for a request already read.

``Exchange.start`` picks what answers a request that passed intake and policy: a listing merged
over the backends, the gateway's own cloud status, or a backend, chosen by the placement and
retried once elsewhere when it failed before any byte reached the client. On the backend the
request is planned and admitted (``admit``: context size, runner options, the model's load, a slot),
sent, relayed as it arrives, and recorded: its result, the breaker's count, the tokens it used.
The stages it calls never call back into it, nor into the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine

from ollama_asgi.admit import Admit
from ollama_asgi.affinity import conversation_key
from ollama_asgi.backend import Backend
from ollama_asgi.errors import GatewayError
from ollama_asgi.inference import ModelLifecycle
from ollama_asgi.intake import Progress, Request
from ollama_asgi.listing import LISTINGS, merged_listing
from ollama_asgi.openai_relay import relay_openai
from ollama_asgi.placement import Placement
from ollama_asgi.policy import Policy
from ollama_asgi.protocol import ParsedRequest
from ollama_asgi.registry import BackendRegistry
from ollama_asgi.relay import RelayResult, SendWatch, relay
from ollama_asgi.responses import send_bytes
from ollama_asgi.retry_after import queue_headers
from ollama_asgi.routing import Kind, Route
from ollama_asgi.settings import Settings
from ollama_asgi.types import Send
from ollama_asgi.upstream import Upstream, UpstreamError, UpstreamResponse

__all__ = ["Exchange", "Retryable"]

logger = logging.getLogger("ollama_asgi")

# Only these request headers reach Ollama: the host's cookies, Authorization, Origin and Host
# stay behind (Ollama answers a foreign Host or Origin with an empty 403 when bound to loopback).
_FORWARD = frozenset({b"content-type", b"accept", b"user-agent"})
_FORWARD_JSON = _FORWARD - {b"content-type"}  # the gateway re-encodes the body: its own Content-Type
_CLOUD_REFUSED = b'{"cloud":{"disabled":true,"source":"config"}}'  # /api/status where cloud_models refuses


class Retryable(Exception):
    """The exchange failed before any byte reached the client; another backend may serve it."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class Exchange:
    """A request's exchange with the backends, from the placement's choice to the last byte relayed.

    It holds the parts it uses, given explicitly; ``relaying`` (the upstream answers being relayed)
    is what a graceful shutdown ends at its drain timeout.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        placement: Placement,
        registry: BackendRegistry,
        policy: Policy,
        admit: Admit,
        lifecycle: ModelLifecycle | None,
        shared: bool,
        retry_after: bytes,
    ) -> None:
        self.settings = settings
        self.placement = placement
        self.registry = registry
        self.policy = policy
        self.lifecycle = lifecycle
        self._admit = admit
        self._shared = shared  # with shared state, the registry follows other workers' backend changes
        self._retry_after = retry_after
        self.relaying: set[UpstreamResponse] = set()  # upstream answers being relayed, ended at the drain timeout
        self._send_watch = SendWatch(settings.send_timeout)  # ends relays whose client stopped reading

    def close(self) -> None:
        self._send_watch.close()

    def start(self, request: Request, send: Send, progress: Progress) -> Coroutine[None, None, None]:
        """The exchange on the chosen backend (the coroutine to await); with several backends, one
        that failed before any byte is retried once elsewhere.

        A single backend has nowhere to retry: its exchange is returned as it is, one coroutine
        less per request; its ``Retryable`` reaches the caller, which answers with the error.
        """
        self.placement.start()
        if self._shared:
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
            return self._on(self.placement.choose(model), request, send, progress)
        return self._retrying(model, request, send, progress)

    async def _retrying(self, model: str | None, request: Request, send: Send, progress: Progress) -> None:
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
                await self._on(backend, request, send, progress)
                return
            except Retryable as exc:
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

    async def _on(self, chosen: Backend, request: Request, send: Send, progress: Progress) -> None:
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
                lease, prepared = self._admit.take_slot_now(request, chosen)
                if lease is None:
                    lease, prepared = await self._admit.before_upstream(request, chosen, send, progress, prepared)
            except UpstreamError as exc:
                self.placement.record_failure(chosen, str(exc))
                raise Retryable(self._upstream_failure(backend, exc)) from exc
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
                raise Retryable(self._upstream_failure(backend, exc)) from exc
            record.responded(lease)
            if resp.status == 503 and "Retry-After" not in resp.headers:
                extra.append((b"retry-after", self._retry_after))  # Ollama's "server busy" names no time
            self.relaying.add(resp)
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
                self.relaying.discard(resp)
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
                await self.policy.rate_limiter.charge_tokens(principal.id, tpm, record.usage().total)

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
