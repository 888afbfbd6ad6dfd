"""Admission control: the one entry point a request passes on its way to a backend's slots.

Everything a request needs before it reaches Ollama (parse, auth, policy, placement) happens before
it queues; then ``Admission.admit`` finds it a slot of its model's runner (``slots``), waiting in
the fair queue when none is free and refused with a truthful ``Retry-After`` (``retry_after``) when
the queue is full or its deadline passes. On a backend that holds fewer models than are wanted, the
request first waits for its model's turn (``turns``); with shared state, the grant also takes a
lease in the store (``shared_admission``). While it waits, its client may ask where it stands
(``describe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

from ollama_asgi.errors import GatewayError
from ollama_asgi.retry_after import retry_after
from ollama_asgi.shared_admission import SharedAdmission
from ollama_asgi.slots import BackendSlots, Lease, Pool, PoolKey, Waiter, granted
from ollama_asgi.state import SharedSlots
from ollama_asgi.turns import ModelTurns, Turn

if TYPE_CHECKING:
    from ollama_asgi.catalog import BackendModels, ModelInfo
    from ollama_asgi.lifecycle import BeforeLoad

logger = logging.getLogger("ollama_asgi.admission")

__all__ = ["Admission", "hold_prewarms"]


class _ResidentLease(Lease):
    """A slot taken at once together with its model's turn: the turn is two fields, not an object."""

    __slots__ = ("gate", "model", "seq")

    gate: ModelTurns
    model: str
    seq: int

    def release(self, *, ok: bool = True) -> None:
        if not self._released:
            Lease.release(self, ok=ok)
            self.gate.leave(self.model, self.seq)


class Admission:
    """All pools of all backends, the per-backend queue bound, and the one entry point ``admit``.

    A pool per (backend, model, kind): ``parallel`` (or the backend's own) is each model's runner's
    share, as ``OLLAMA_NUM_PARALLEL`` is; ``backend_parallel``, when set, caps a backend's pools
    together.
    """

    def __init__(
        self,
        *,
        parallel: int,
        embed_parallel: int | None,
        max_queue: int,
        shared: SharedSlots | None = None,
        fail_open: bool = True,
        capacities: dict[str, int] | None = None,
        backend_parallel: int | None = None,
    ) -> None:
        self.parallel = parallel
        self.capacities = capacities or {}  # per-backend `parallel` overrides
        self.embed_parallel = embed_parallel
        self.backend_parallel = backend_parallel
        self.max_queue = max_queue
        # Keyed by ``PoolKey``; looked up by plain ``(backend, model, kind)`` tuples, which equal them.
        self.pools: dict[tuple[str, str, str], Pool] = {}
        self.backends: dict[str, BackendSlots] = {}
        self.shared = shared
        self._shared_admission = (  # grants take a lease in the shared store too
            None
            if shared is None
            else SharedAdmission(shared, max_queue=max_queue, fail_open=fail_open, backend_parallel=backend_parallel)
        )
        self.closing: Callable[[], GatewayError] | None = None  # set once the gateway stops taking work
        # Swap-aware gates per backend (see ``configure_turns``); empty: no request pays for them.
        self.turns: dict[str, ModelTurns] = {}
        self._turn_limit = 0
        self._turn_delay = 0.0
        self.grouped = False  # requests take their model's turn before a slot (``configure_turns``)
        self.load_seconds: Callable[[str], float] = lambda backend: 5.0  # expected seconds per model switch
        # Requests waiting now, by request id: what their client may ask of ``describe``.
        self._queued_requests: dict[str, tuple[str, Callable[[], dict[str, object]]]] = {}

    def configure_turns(self, limit: int, max_delay: float) -> None:
        """Group each backend's queue by model when it holds at most ``limit`` models (see ``ModelTurns``)."""
        self._turn_limit = limit
        self._turn_delay = max_delay
        self.grouped = True

    def gate(self, backend: str) -> ModelTurns | None:
        if not self._turn_limit:
            return None
        gate = self.turns.get(backend)
        if gate is None:
            gate = self.turns[backend] = ModelTurns(
                self._turn_limit,
                self._turn_delay,
                self.capacities.get(backend, self.parallel),
                lambda ahead, loads: self.backend_wait(backend, ahead) + loads * self.load_seconds(backend),
            )
        return gate

    def backend_wait(self, backend: str, ahead: int) -> float:
        """Seconds until a request with ``ahead`` in front of it gets a slot on ``backend``, whatever its
        model: the slowest service time seen there over one model's slots (a grouped queue runs one
        model's requests at a time)."""
        service = max((p.service_time() for p in self._pools_of(backend)), default=0.0)
        return (ahead + 1) * service / self.capacities.get(backend, self.parallel)

    def _pools_of(self, backend: str) -> list[Pool]:
        slots = self.backends.get(backend)
        return slots.pools if slots is not None else []

    def has_room(self, backend: str, model: str = "") -> bool:
        """A request for ``model`` would find a slot free on ``backend`` (without a model: under its cap)."""
        slots = self.backends.get(backend)
        if not model:
            return slots is None or slots.in_flight < slots.capacity
        pool = self.pools.get((backend, model, "generate"))
        if pool is None:
            return slots is None or slots.in_flight < slots.capacity
        return pool.has_room()

    def may_prewarm(self, backend: str, model: str) -> bool:
        """A pre-warm of ``model`` takes no group's place: its model runs there, or a place is free."""
        gate = self.turns.get(backend)
        return gate is None or model in gate.resident or (len(gate.resident) < gate.limit and not gate.waiting)

    async def enter_turn(
        self, backend: str, model: str, wait_limit: float, request_id: str = "", principal: str = ""
    ) -> Turn | None:
        """The model's turn on ``backend``, waited for when another model's group runs there now."""
        gate = self.gate(backend)
        if gate is None:
            return None
        if self.closing is not None:
            raise self.closing()
        turn = gate.try_enter(model, request_id)
        if turn is not None:
            return turn
        if self.queued(backend) >= self.max_queue:
            pool = self.pool(backend, "generate", model)
            raise GatewayError(
                503,
                f"the gateway's queue for this backend is full ({self.max_queue} waiting); try again later",
                retry_after(pool.refusal_wait(self.queued(backend))),
                reason="queue_full",
            )
        describe: tuple[str, Callable[[], dict[str, object]]] | None = None

        def queued(turn: Turn) -> None:
            nonlocal describe
            if request_id:
                describe = (principal, partial(self._describe_turn, gate, turn, backend))
                self._queued_requests[request_id] = describe

        try:
            return await gate.enter(model, wait_limit, request_id, on_queued=queued)
        finally:
            if describe is not None and self._queued_requests.get(request_id) is describe:
                del self._queued_requests[request_id]

    @staticmethod
    def _describe_turn(gate: ModelTurns, turn: Turn, backend: str) -> dict[str, object]:
        return {
            "state": "waiting_for_model",
            "backend": backend,
            "model": turn.model,
            "position": gate.position(turn),
            "expected_wait": round(gate.expected_wait(turn), 3),
            "waited": round(time.monotonic() - turn.enqueued, 3),
        }

    def _describe_slot(self, pool: Pool, waiter: Waiter, backend: str) -> dict[str, object]:
        ahead = pool.position(waiter)
        return {
            "state": "waiting_for_slot",
            "backend": backend,
            "position": ahead,
            "expected_wait": round(pool.expected_wait(ahead), 3),
            "waited": round(time.monotonic() - waiter.enqueued, 3),
        }

    @contextlib.contextmanager
    def listed(self, request_id: str, principal: str, describe: Callable[[], dict[str, object]]) -> Iterator[None]:
        """Answer ``describe`` for ``request_id`` while the block runs (a wait outside the queues: a load)."""
        if not request_id:
            yield
            return
        entry = self._queued_requests[request_id] = (principal, describe)
        try:
            yield
        finally:
            if self._queued_requests.get(request_id) is entry:
                del self._queued_requests[request_id]

    def describe(self, request_id: str, principal: str | None = None) -> dict[str, object] | None:
        """Where a waiting request stands: its position and expected wait; None when it is not waiting
        (or, with ``principal``, when it is another principal's)."""
        entry = self._queued_requests.get(request_id)
        if entry is None or (principal is not None and entry[0] != principal):
            return None
        return {"request_id": request_id, **entry[1]()}

    def forget(self, backend: str) -> list[Pool]:
        """A removed backend's pools, slot caps and turns dropped; returns the pools, whose requests finish."""
        self.capacities.pop(backend, None)
        self.turns.pop(backend, None)
        self.backends.pop(backend, None)
        keys = [key for key in self.pools if key[0] == backend]
        return [self.pools.pop(key) for key in keys]

    def close(self, error: Callable[[], GatewayError]) -> int:
        """Refuse new requests and fail every queued one with ``error()``; slots in use stay until released."""
        self.closing = error
        if self._shared_admission is not None:
            self._shared_admission.closing = error
        failed = sum(gate.fail_waiters(error) for gate in self.turns.values())
        return failed + sum(pool.fail_waiters(error) for pool in self.pools.values())

    async def aclose(self) -> None:
        """Wait for shared-lease releases still on their way to the store."""
        if self._shared_admission is not None:
            await self._shared_admission.aclose()

    def pool(self, backend: str, kind: str, model: str = "") -> Pool:
        """The slots ``model``'s requests of ``kind`` take on ``backend`` (``model`` canonical)."""
        if kind != "generate" and (kind != "embed" or self.embed_parallel is None):
            kind = "generate"  # embeddings run on their model's runner, in its slots
        pool = self.pools.get((backend, model, kind))
        if pool is None:
            pool = self._new_pool(PoolKey(backend, model, kind))
        return pool

    def _new_pool(self, key: PoolKey) -> Pool:
        slots = self.backends.get(key.backend)
        if slots is None:
            slots = self.backends[key.backend] = BackendSlots(self.backend_parallel)
        parallel = self.capacities.get(key.backend, self.parallel)
        capacity = self.embed_parallel or parallel if key.kind == "embed" else parallel
        pool = self.pools[key] = Pool(key, capacity, slots)
        pool.shared = self.shared is not None
        return pool

    def queued(self, backend: str) -> int:
        gate = self.turns.get(backend)
        waiting = gate.waiting if gate is not None else 0
        return waiting + sum(p.waiting for p in self._pools_of(backend))

    def try_admit(self, backend: str, kind: str, model: str = "") -> Lease | None:
        """A free slot at once, when nobody waits for it; None sends the caller through ``admit``.

        Most requests find a slot free: this takes it without a coroutine or a clock read more.
        """
        if self.closing is not None or self.shared is not None:
            return None
        pool = self.pools.get((backend, model, kind)) or self.pool(backend, kind, model)
        granted_at = pool.grant_now()
        return None if granted_at is None else Lease(pool, granted_at, 0.0)

    def try_admit_turn(self, backend: str, kind: str, model: str) -> Lease | None:
        """``try_admit`` where the queue is grouped by model (``grouped``): ``model``'s turn and a slot, at once."""
        if self.closing is not None or self.shared is not None:
            return None
        pool = self.pools.get((backend, model, kind)) or self.pool(backend, kind, model)
        if pool.waiting or not pool.has_room():
            return None
        gate = self.turns.get(backend) or self.gate(backend)
        assert gate is not None
        seq = gate.enter_now(model)
        if not seq:
            return None
        lease = _ResidentLease(pool, pool.grant(), 0.0)
        lease.gate, lease.model, lease.seq = gate, model, seq
        return lease

    async def admit(
        self,
        backend: str,
        *,
        kind: str,
        principal: str,
        weight: float = 1.0,
        priority: int = 0,
        wait_limit: float,
        client: str = "",
        request_id: str = "",
        model: str = "",
    ) -> Lease:
        """Wait for a slot; raise a 503 ``GatewayError`` with Retry-After when none comes in time.

        ``model`` (canonical) picks its runner's slots; ``client`` (the caller's host) tells
        requesters of one principal apart for Retry-After; ``request_id`` lets the client ask
        ``describe`` where it stands while it waits.
        """
        if self.closing is not None:
            raise self.closing()
        pool = self.pool(backend, kind, model)
        requester = (principal, client)
        if self._shared_admission is not None:
            ahead = self.queued(backend)
            if self._full(pool, ahead, requester):
                raise self._queue_full(pool, ahead, requester)
            refuse = partial(self._queue_full, pool, ahead, requester)
            return await self._shared_admission.admit(
                pool, backend, principal, weight, priority, wait_limit, requester, refuse
            )
        now = time.monotonic()
        granted_at = pool.grant_now()
        if granted_at is not None:
            return Lease(pool, granted_at, 0.0)
        ahead = self.queued(backend)
        if self._full(pool, ahead, requester):
            raise self._queue_full(pool, ahead, requester)
        waiter = Waiter(principal, weight, priority, now + wait_limit, asyncio.get_running_loop().create_future())
        pool.enqueue(waiter)
        waiter.position = pool.position(waiter)
        describe = None
        if request_id:
            describe = self._queued_requests[request_id] = (
                principal,
                partial(self._describe_slot, pool, waiter, backend),
            )
        try:
            async with asyncio.timeout(wait_limit):
                await waiter.future
        except TimeoutError:
            if not granted(waiter):
                pool.remove(waiter)
                raise GatewayError(
                    503,
                    f"no slot became free within {wait_limit:g}s; the backend is at capacity",
                    retry_after(pool.refusal_wait(pool.waiting, requester)),
                    reason="deadline",
                ) from None
        except asyncio.CancelledError:
            if granted(waiter):
                pool.release(waiter.granted_at, record=False)
            else:
                pool.remove(waiter)
                waiter.future.cancel()
            raise
        finally:
            if describe is not None and self._queued_requests.get(request_id) is describe:
                del self._queued_requests[request_id]
        return Lease(pool, waiter.granted_at, waiter.granted_at - now, position=waiter.position)

    def _full(self, pool: Pool, ahead: int, requester: tuple[str, str]) -> bool:
        """No queue place for this request: the queue is full, counting places kept for refused
        requesters whose time has come, unless it is one of them (see ``Pool.refusal_wait``)."""
        if not pool.kept:
            return ahead >= self.max_queue
        if pool.kept.claim(requester):
            return False  # its place was kept: it may queue beyond max_queue by the places kept
        # Places kept for clients not back yet are not given to newcomers, down to a queue that still
        # keeps every slot busy: a client that comes back late never leaves a slot idle.
        return ahead >= max(self.max_queue - pool.kept.held(), min(pool.capacity, self.max_queue))

    def _queue_full(self, pool: Pool, ahead: int, requester: tuple[str, str]) -> GatewayError:
        return GatewayError(
            503,
            f"the gateway's queue for this backend is full ({self.max_queue} waiting); try again later",
            retry_after(pool.refusal_wait(ahead, requester)),
            reason="queue_full",
        )


def hold_prewarms(admission: Admission, before_load: BeforeLoad) -> BeforeLoad:
    """``before_load`` that refuses a pre-warm (a guess) which would take a waiting group's place.

    Refused with ``models_busy``, as the VRAM guard refuses a pre-warm, so a request that joined it
    loads with a turn of its own.
    """

    async def before(models: BackendModels, info: ModelInfo, num_ctx: int, *, patient: bool) -> None:
        if not patient and not admission.may_prewarm(models.backend.name, info.name):
            raise GatewayError(503, f"pre-warming '{info.name}' would take another model's turn", reason="models_busy")
        await before_load(models, info, num_ctx, patient=patient)

    return before
