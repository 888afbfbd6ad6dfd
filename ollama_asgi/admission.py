"""Admission control: the one entry point a request passes on its way to a backend's slots.

Everything a request needs before it reaches Ollama (parse, auth, policy, placement) happens before
it queues; then ``Admission.admit`` finds it a slot of its model's runner in the slots its backend
holds (``slots.BackendSlots``), waiting in the fair queue when none is free and refused with a
truthful ``Retry-After`` (``retry_after``) when the queue is full or its deadline passes. On a
backend that holds fewer models than are wanted, the request first waits for its model's turn
(``turns``); with shared state, the grant also takes a lease in the store (``shared_admission``).
While it waits, its client may ask where it stands (``describe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING

from ollama_asgi.errors import GatewayError
from ollama_asgi.retry_after import retry_after
from ollama_asgi.shared_admission import SharedAdmission
from ollama_asgi.slots import BackendSlots, Lease, Pool, PoolKey, Waiter
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
    """The admission policy over backends' slots: the per-backend queue bound and the one entry point ``admit``.

    It keeps no backend's slots: each call is handed the ``BackendSlots`` its backend holds (a pool
    per model and kind of work there), so a removed backend's pools, queue and turns go with it.
    ``parallel`` and ``backend_parallel`` are what ``slots_for`` gives a backend that names none.
    """

    def __init__(
        self,
        *,
        parallel: int,
        embed_parallel: int | None,
        max_queue: int,
        shared: SharedSlots | None = None,
        fail_open: bool = True,
        backend_parallel: int | None = None,
    ) -> None:
        self.parallel = parallel
        self.embed_parallel = embed_parallel
        self.backend_parallel = backend_parallel
        self.max_queue = max_queue
        self.shared = shared
        self._shared_admission = (  # grants take a lease in the shared store too
            None
            if shared is None
            else SharedAdmission(shared, max_queue=max_queue, fail_open=fail_open, backend_parallel=backend_parallel)
        )
        self.closing: Callable[[], GatewayError] | None = None  # set once the gateway stops taking work
        # Swap-aware gates (``configure_turns``), one in each backend's slots, made on first use; none
        # configured: no request pays for them.
        self._turn_limit = 0
        self._turn_delay = 0.0
        self.grouped = False  # requests take their model's turn before a slot (``configure_turns``)
        self.load_seconds: Callable[[str], float] = lambda backend: 5.0  # expected seconds per model switch
        # Requests waiting now, by request id: what their client may ask of ``describe``.
        self._queued_requests: dict[str, tuple[str, Callable[[], dict[str, object]]]] = {}

    def slots_for(self, name: str, parallel: int | None = None) -> BackendSlots:
        """Fresh slots for a backend named ``name``: ``parallel`` per model's runner (this admission's
        when None), capped together at ``backend_parallel``."""
        return BackendSlots(name, parallel or self.parallel, self.backend_parallel)

    def configure_turns(self, limit: int, max_delay: float) -> None:
        """Group each backend's queue by model when it holds at most ``limit`` models (see ``ModelTurns``)."""
        self._turn_limit = limit
        self._turn_delay = max_delay
        self.grouped = True

    def gate(self, slots: BackendSlots) -> ModelTurns | None:
        """The backend's model-turns gate, made on first use; None unless the queue is grouped by model."""
        if not self._turn_limit:
            return None
        gate = slots.turns
        if gate is None:
            gate = slots.turns = ModelTurns(
                self._turn_limit,
                self._turn_delay,
                slots.parallel,
                lambda ahead, loads: self.backend_wait(slots, ahead) + loads * self.load_seconds(slots.name),
            )
        return gate

    @staticmethod
    def backend_wait(slots: BackendSlots, ahead: int) -> float:
        """Seconds until a request with ``ahead`` in front of it gets a slot on the backend, whatever its
        model: the slowest service time seen there over one model's slots (a grouped queue runs one
        model's requests at a time)."""
        service = max((p.service_time() for p in slots.pools.values()), default=0.0)
        return (ahead + 1) * service / slots.parallel

    @staticmethod
    def has_room(slots: BackendSlots, model: str = "") -> bool:
        """A request for ``model`` would find a slot free on the backend (without a model: under its cap)."""
        pool = slots.pools.get((model, "generate")) if model else None
        if pool is None:
            return slots.in_flight < slots.capacity
        return pool.has_room()

    @staticmethod
    def may_prewarm(slots: BackendSlots, model: str) -> bool:
        """A pre-warm of ``model`` takes no group's place: its model runs there, or a place is free."""
        gate = slots.turns
        return gate is None or model in gate.resident or (len(gate.resident) < gate.limit and not gate.waiting)

    async def enter_turn(
        self, slots: BackendSlots, model: str, wait_limit: float, request_id: str = "", principal: str = ""
    ) -> Turn | None:
        """The model's turn on the backend, waited for when another model's group runs there now."""
        gate = self.gate(slots)
        if gate is None:
            return None
        if self.closing is not None:
            raise self.closing()
        turn = gate.try_enter(model, request_id)
        if turn is not None:
            return turn
        if self.queued(slots) >= self.max_queue:
            pool = self.pool(slots, "generate", model)
            raise GatewayError(
                503,
                f"the gateway's queue for this backend is full ({self.max_queue} waiting); try again later",
                retry_after(pool.refusal_wait(self.queued(slots))),
                reason="queue_full",
            )
        describe: tuple[str, Callable[[], dict[str, object]]] | None = None

        def queued(turn: Turn) -> None:
            nonlocal describe
            if request_id:
                describe = (principal, partial(self._describe_turn, gate, turn, slots.name))
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

    def close(self, error: Callable[[], GatewayError], backends: Iterable[BackendSlots]) -> int:
        """Refuse new requests and fail every one queued on ``backends`` with ``error()``; slots in use
        stay until released."""
        self.closing = error
        if self._shared_admission is not None:
            self._shared_admission.closing = error
        failed = 0
        for slots in backends:
            if slots.turns is not None:
                failed += slots.turns.fail_waiters(error)
            failed += sum(pool.fail_waiters(error) for pool in list(slots.pools.values()))
        return failed

    async def aclose(self) -> None:
        """Wait for shared-lease releases still on their way to the store."""
        if self._shared_admission is not None:
            await self._shared_admission.aclose()

    def pool(self, slots: BackendSlots, kind: str, model: str = "") -> Pool:
        """The slots ``model``'s requests of ``kind`` take on the backend (``model`` canonical)."""
        if kind != "generate" and (kind != "embed" or self.embed_parallel is None):
            kind = "generate"  # embeddings run on their model's runner, in its slots
        pool = slots.pools.get((model, kind))
        if pool is None:
            capacity = self.embed_parallel or slots.parallel if kind == "embed" else slots.parallel
            pool = Pool(PoolKey(slots.name, model, kind), capacity, slots)  # joins ``slots.pools``
            pool.shared = self.shared is not None
        return pool

    @staticmethod
    def queued(slots: BackendSlots) -> int:
        gate = slots.turns
        waiting = gate.waiting if gate is not None else 0
        return waiting + sum(p.waiting for p in slots.pools.values())

    def try_admit(self, slots: BackendSlots, kind: str, model: str = "") -> Lease | None:
        """A free slot at once, when nobody waits for it; None sends the caller through ``admit``.

        Most requests find a slot free: this takes it without a coroutine or a clock read more.
        """
        if self.closing is not None or self.shared is not None:
            return None
        pool = slots.pools.get((model, kind)) or self.pool(slots, kind, model)
        granted_at = pool.grant_now()
        return None if granted_at is None else Lease(pool, granted_at, 0.0)

    def try_admit_turn(self, slots: BackendSlots, kind: str, model: str) -> Lease | None:
        """``try_admit`` where the queue is grouped by model (``grouped``): ``model``'s turn and a slot, at once."""
        if self.closing is not None or self.shared is not None:
            return None
        pool = slots.pools.get((model, kind)) or self.pool(slots, kind, model)
        if pool.waiting or not pool.has_room():
            return None
        gate = slots.turns or self.gate(slots)
        assert gate is not None
        seq = gate.enter_now(model)
        if not seq:
            return None
        lease = _ResidentLease(pool, pool.grant(), 0.0)
        lease.gate, lease.model, lease.seq = gate, model, seq
        return lease

    async def admit(
        self,
        slots: BackendSlots,
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
        pool = self.pool(slots, kind, model)
        requester = (principal, client)
        if self._shared_admission is not None:
            ahead = self.queued(slots)
            if self._full(pool, ahead, requester):
                raise self._queue_full(pool, ahead, requester)
            refuse = partial(self._queue_full, pool, ahead, requester)
            return await self._shared_admission.admit(
                pool, slots.name, principal, weight, priority, wait_limit, requester, refuse
            )
        now = time.monotonic()
        granted_at = pool.grant_now()
        if granted_at is not None:
            return Lease(pool, granted_at, 0.0)
        ahead = self.queued(slots)
        if self._full(pool, ahead, requester):
            raise self._queue_full(pool, ahead, requester)
        waiter = Waiter(principal, weight, priority, now + wait_limit, asyncio.get_running_loop().create_future())
        pool.enqueue(waiter)
        waiter.position = pool.position(waiter)
        describe = None
        if request_id:
            describe = self._queued_requests[request_id] = (
                principal,
                partial(self._describe_slot, pool, waiter, slots.name),
            )
        try:
            await pool.await_grant(waiter, wait_limit, requester, lambda: pool.release(waiter.granted_at, record=False))
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


def hold_prewarms(
    admission: Admission, slots_of: Callable[[str], BackendSlots | None], before_load: BeforeLoad
) -> BeforeLoad:
    """``before_load`` that refuses a pre-warm (a guess) which would take a waiting group's place.

    ``slots_of`` finds a backend's slots by its name. Refused with ``models_busy``, as the VRAM guard
    refuses a pre-warm, so a request that joined it loads with a turn of its own.
    """

    async def before(models: BackendModels, info: ModelInfo, num_ctx: int, *, patient: bool) -> None:
        if not patient:
            slots = slots_of(models.backend.name)
            if slots is not None and not admission.may_prewarm(slots, info.name):
                raise GatewayError(
                    503, f"pre-warming '{info.name}' would take another model's turn", reason="models_busy"
                )
        await before_load(models, info, num_ctx, patient=patient)

    return before
