"""Admitting a request: its rate limit, its context sized, its model loaded, then a slot.

``Admit.take_slot_now`` is the common case without a coroutine (no limit to ask, the model's facts
known, its runner loaded, a slot free); ``Admit.before_upstream`` is everything else: it asks the
rate limiter, fetches the model's facts, loads the model once for everyone who waits for it, and
waits for a slot in the fair queue, keeping an SSE client's connection alive meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from functools import partial

from ollama_asgi.admission import Admission
from ollama_asgi.auth import Principal
from ollama_asgi.backend import Backend
from ollama_asgi.durations import parse_duration
from ollama_asgi.errors import ConfigError, GatewayError
from ollama_asgi.inference import ModelLifecycle
from ollama_asgi.intake import Progress, Request
from ollama_asgi.model_names import canonical_model
from ollama_asgi.plan import Prepared
from ollama_asgi.policy import Policy
from ollama_asgi.relay import stream_headers
from ollama_asgi.routing import EMBED_ROUTES, Route
from ollama_asgi.settings import Settings
from ollama_asgi.slots import PRIORITIES, Lease
from ollama_asgi.types import Send

__all__ = ["Admit"]

_ADMISSION_HEADERS = frozenset({b"x-request-timeout", b"x-request-priority"})


class Admit:
    """Everything between a chosen backend and the request going upstream."""

    def __init__(
        self, settings: Settings, admission: Admission, lifecycle: ModelLifecycle | None, policy: Policy
    ) -> None:
        self.settings = settings
        self.admission = admission
        self.lifecycle = lifecycle
        self.policy = policy

    def take_slot_now(self, request: Request, backend: Backend) -> tuple[Lease | None, Prepared | None]:
        """The common case without a coroutine: no rate limit to ask, the model's facts known, its
        runner loaded, a slot free. ``(None, prepared)`` sends the request through ``before_upstream``
        (with what was already prepared, so nothing is counted twice)."""
        principal = request.principal
        assert principal is not None
        if not request.rate_checked and self.policy.rate_limited(principal):
            return None, None
        prepared = None
        parsed = request.parsed
        lifecycle = self.lifecycle
        if lifecycle is not None and parsed is not None and parsed.model is not None and not parsed.cloud:
            prepared = lifecycle.prepare_now(request.route, parsed, principal, backend.upstream)
            if prepared is None:
                return None, None
            if self._must_load(prepared):
                return None, prepared
        for name, _ in request.scope["headers"]:
            if name in _ADMISSION_HEADERS:
                return None, prepared  # read and checked by _admit
        if self.admission.grouped and prepared is not None:
            return self.admission.try_admit_turn(backend.slots, _pool_kind(request.route), prepared.info.name), prepared
        return self.admission.try_admit(
            backend.slots, _pool_kind(request.route), _slot_model(request, prepared)
        ), prepared

    def _must_load(self, prepared: Prepared | None) -> bool:
        """The request's model is not yet loaded with its ``num_ctx``: it loads before taking a slot."""
        return (
            prepared is not None
            and self.lifecycle is not None
            and not prepared.load_only
            and not self.lifecycle.is_ready(prepared)
        )

    async def before_upstream(
        self, request: Request, backend: Backend, send: Send, progress: Progress, prepared: Prepared | None
    ) -> tuple[Lease, Prepared | None]:
        """Rate limit, size the context, load the model and take a slot: everything before Ollama."""
        principal = request.principal
        assert principal is not None
        if not request.rate_checked:
            request.rate_checked = True
            if self.policy.rate_limited(principal):
                await self.policy.check_rate(principal)
        parsed = request.parsed
        if (
            prepared is None
            and self.lifecycle is not None
            and parsed is not None
            and parsed.model is not None
            and not parsed.cloud  # nothing to load, and num_ctx does not apply on ollama.com
        ):
            prepared = self.lifecycle.prepare_now(request.route, parsed, principal, backend.upstream)
            if prepared is None:
                prepared = await self.lifecycle.prepare(request.route, parsed, principal, backend.upstream)
        return await self._admit(backend, request, send, progress, prepared), prepared

    async def _load_then_admit(
        self,
        backend: Backend,
        prepared: Prepared | None,
        kind: str,
        principal: Principal,
        priority: int,
        wait_limit: float,
        client: str,
        request_id: str = "",
        model: str = "",
    ) -> Lease:
        # On a backend that holds fewer models than are wanted, the model's turn comes first (the
        # queue is served grouped by model), so its load never evicts a model whose group still runs.
        turn = None
        if prepared is not None and self.admission.grouped:
            turn = await self.admission.enter_turn(
                backend.slots, prepared.info.name, wait_limit, request_id, principal.id
            )
        try:
            # The model is loaded (once, whoever else waits for it) before the request takes a slot, so
            # slots are only ever held by requests Ollama can start at once.
            if self._must_load(prepared):
                assert prepared is not None and self.lifecycle is not None
                loading = partial(self._describe_load, backend.name, prepared, time.monotonic())
                with self.admission.listed(request_id, principal.id, loading):
                    await self.lifecycle.ensure_loaded(prepared, wait_limit=self.settings.load_wait_timeout)
            lease = await self.admission.admit(
                backend.slots,
                kind=kind,
                client=client,
                principal=principal.id,
                weight=principal.weight,
                priority=priority,
                wait_limit=wait_limit,
                request_id=request_id,
                model=model,
            )
            if self._must_load(prepared):
                # Evicted while this request waited for its slot (an idle model is what another
                # model's load makes room with): loaded again by the gateway, within its memory
                # budget, instead of reloaded by Ollama on its own. The slot is kept meanwhile:
                # Ollama could not start the request any sooner.
                assert prepared is not None and self.lifecycle is not None
                try:
                    await self.lifecycle.ensure_loaded(prepared, wait_limit=self.settings.load_wait_timeout)
                except BaseException:
                    lease.release(ok=False)
                    raise
        except BaseException:
            if turn is not None:
                turn.release()
            raise
        if turn is not None:
            lease.take_turn(turn)
        return lease

    def _describe_load(self, backend: str, prepared: Prepared, since: float) -> dict[str, object]:
        """What ``GET /_gateway/queue/{request_id}`` says of a request waiting for its model to load."""
        assert self.lifecycle is not None
        loader = self.lifecycle.loader
        state = loader.loading.get((backend, prepared.info.name))
        left = 0.0
        if state is not None:
            left = max(0.0, loader.expected_load_seconds(prepared.info) - (time.monotonic() - state.started))
        return {
            "state": "loading_model",
            "backend": backend,
            "model": prepared.info.name,
            "position": 0,
            "expected_wait": round(left, 3),
            "waited": round(time.monotonic() - since, 3),
        }

    async def _admit(
        self, backend: Backend, request: Request, send: Send, progress: Progress, prepared: Prepared | None
    ) -> Lease:
        principal = request.principal
        assert principal is not None
        kind = _pool_kind(request.route)
        priority = PRIORITIES[principal.priority]
        wait_limit = self.settings.queue_timeout
        for name, value in request.scope["headers"]:
            if name == b"x-request-timeout":
                wait_limit = _header_seconds(value, self.settings.queue_timeout_max)
            elif name == b"x-request-priority":
                if value.strip().lower() == b"batch":
                    priority = PRIORITIES["batch"]  # anyone may step down; nobody may step up
                elif value.strip().lower() != b"interactive":
                    raise GatewayError(400, "X-Request-Priority must be 'interactive' or 'batch'")
        if not self._must_load(prepared):
            if self.admission.grouped and prepared is not None:
                lease = self.admission.try_admit_turn(backend.slots, kind, prepared.info.name)
            else:
                lease = self.admission.try_admit(backend.slots, kind, _slot_model(request, prepared))
            if lease is not None:
                return lease
        peer = request.scope.get("client")
        client = str(peer[0]) if peer else ""
        request_id = progress.record.request_id
        admit = self._load_then_admit(
            backend, prepared, kind, principal, priority, wait_limit, client, request_id, _slot_model(request, prepared)
        )
        interval = self.settings.sse_keepalive
        parsed = request.parsed
        if not (interval and request.route.openai and parsed is not None and parsed.stream):
            return await admit
        told = partial(self.admission.describe, request_id)
        return await _with_sse_keepalive(admit, send, progress, interval, lambda: _queue_comment(told()))


_KEEPALIVE = b": waiting for a free slot\n\n"


def _queue_comment(told: dict[str, object] | None) -> bytes:
    """The SSE comment sent while a request waits: where it stands, when it is queued."""
    if told is None:
        return _KEEPALIVE
    return (
        f": queued position={told['position']} expected_wait={told['expected_wait']} "
        f"waited={told['waited']} state={told['state']}\n\n"
    ).encode()


async def _with_sse_keepalive(
    admit: Coroutine[None, None, Lease],
    send: Send,
    progress: Progress,
    interval: float,
    comment: Callable[[], bytes] | None = None,
) -> Lease:
    """Wait for admission, keeping an SSE client's connection alive with comment lines meanwhile.

    The response starts only once the wait exceeds ``interval``, so short waits still get a real
    status code; after that, errors are sent as SSE error events.
    """
    task = asyncio.ensure_future(admit)
    try:
        while True:
            done, _ = await asyncio.wait((task,), timeout=interval)
            if done:
                return task.result()
            if not progress.started:
                progress.started = True
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": stream_headers(b"text/event-stream", [progress.record.id_header]),
                    }
                )
            body = comment() if comment is not None else _KEEPALIVE
            await send({"type": "http.response.body", "body": body, "more_body": True})
    except asyncio.CancelledError:
        task.cancel()
        raise


def _slot_model(request: Request, prepared: Prepared | None) -> str:
    """Whose runner's slots a request takes: its model, canonical ("" when it names none)."""
    if prepared is not None:
        return prepared.info.name
    parsed = request.parsed
    return canonical_model(parsed.model) if parsed is not None and parsed.model else ""


def _pool_kind(route: Route) -> str:
    """Which slots a request takes: embeddings may have their own (``embed_parallel``)."""
    return "embed" if route.name in EMBED_ROUTES else "generate"


def _header_seconds(value: bytes, cap: float) -> float:
    try:
        seconds = parse_duration(value.decode("latin-1"), field="X-Request-Timeout")
    except (ConfigError, UnicodeDecodeError):
        raise GatewayError(400, "X-Request-Timeout must be a number of seconds or a duration like 30s") from None
    if seconds <= 0:
        raise GatewayError(400, "X-Request-Timeout must be greater than zero")
    return min(seconds, cap)
