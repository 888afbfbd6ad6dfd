"""Admission control: per-runner slots, a bounded fair queue with deadlines, a truthful Retry-After.

Ollama queues requests for a loaded model without bound and without timeout, and its 503 says
nothing about when to come back. So the gateway keeps at most ``parallel`` requests in flight per
model on a backend (``OLLAMA_NUM_PARALLEL`` is per loaded model: each runner serves that many at
once, and two loaded models run side by side), optionally at most ``backend_parallel`` per backend
across its models, and holds the rest here, where waiting is cheap; Ollama then never queues
internally. Embeddings run on their model's runner as in Ollama, so they take that model's slots,
unless ``embed_parallel`` gives them slots of their own.

Fairness is start-time fair queueing across principals: each principal has its own FIFO and a
virtual time that advances by ``1 / weight`` per request served; the next slot goes to the waiting
principal with the smallest virtual time, and a principal that was idle starts at the current
virtual time, so a flood from one user cannot push a newcomer back by more than one service per
slot. Priority classes are strict: interactive work is served before batch work.

A freed slot is handed straight to the next waiter's future (no polling), and everything a
request needs before it reaches Ollama (parse, auth, policy, placement) happens before it queues.

On a backend that holds fewer models than are wanted, a request first waits for its model's turn
(``turns``), so the queue is served grouped by model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote

from ollama_asgi.errors import GatewayError
from ollama_asgi.retry_after import KeptPlaces, retry_after
from ollama_asgi.state import QueuePlace, SharedSlots, StateUnavailable
from ollama_asgi.turns import ModelTurns, Turn

if TYPE_CHECKING:
    from ollama_asgi.catalog import BackendModels, ModelInfo
    from ollama_asgi.lifecycle import BeforeLoad

logger = logging.getLogger("ollama_asgi.admission")

__all__ = [
    "Admission",
    "Lease",
    "Pool",
    "PoolKey",
    "PRIORITIES",
    "hold_prewarms",
]

PRIORITIES = {"interactive": 0, "batch": 1}


@dataclass(slots=True, eq=False)
class _Waiter:
    principal: str
    weight: float
    priority: int
    deadline: float
    future: asyncio.Future[None]
    enqueued: float = field(default_factory=time.monotonic)
    granted_at: float = 0.0
    holder: str = ""  # the shared lease granted to this waiter, when state is shared
    place: str = ""  # its place in the shared queue bound, until given up
    position: int = 0  # requests ahead of it when it queued (told to the client)


class _ServiceClock:
    """Exponentially weighted service time, the basis of every Retry-After the gateway sends."""

    __slots__ = ("mean", "samples")

    def __init__(self) -> None:
        self.mean = 0.0
        self.samples = 0

    def record(self, seconds: float) -> None:
        self.samples += 1
        alpha = max(0.1, 1.0 / self.samples)  # plain average at first, then EWMA
        self.mean += alpha * (seconds - self.mean)


class PoolKey(NamedTuple):
    """Whose slots a pool holds: a backend's runner of one model, for one kind of work.

    A tuple, so the hot path looks a pool up by a plain ``(backend, model, kind)`` without building
    one; typed fields, so nothing splits a joined name apart again.
    """

    backend: str
    model: str  # canonical model name; "" for requests that name none
    kind: str  # "generate", or "embed" where embeddings have slots of their own

    @property
    def name(self) -> str:
        """One string for the key, unambiguous whatever the parts hold (shared-state keys, logs)."""
        return "/".join(quote(part, safe="") for part in self)


class BackendSlots:
    """A backend's cap across all its pools (``backend_parallel``) and the pools it spans.

    A slot freed under the cap goes to the pool whose next waiter comes first (priority, then
    arrival), so the fair order within each pool holds and no model's queue is passed over.
    """

    __slots__ = ("capacity", "in_flight", "pools")

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity if capacity is not None else 1 << 62  # none: no cap beyond each pool's
        self.in_flight = 0
        self.pools: list[Pool] = []

    def dispatch(self) -> None:
        """Hand slots freed under the cap to waiters of the backend's pools, in arrival order."""
        while self.in_flight < self.capacity:
            best: Pool | None = None
            best_rank = (0, 0.0)
            for pool in self.pools:
                if pool.waiting and pool.in_flight < pool.capacity:
                    head = pool.peek()
                    if head is not None and (best is None or (head.priority, head.enqueued) < best_rank):
                        best, best_rank = pool, (head.priority, head.enqueued)
            if best is None:
                return
            if best.shared:
                best.released.set()
                return
            best.dispatch_one()


class Pool:
    """The slots of one model's runner on one backend, and the fair queue in front of them."""

    def __init__(self, name: str | PoolKey, capacity: int, backend: BackendSlots | None = None) -> None:
        self.key = name if isinstance(name, PoolKey) else PoolKey(name, "", "generate")
        self.name = self.key.name if isinstance(name, PoolKey) else name
        self.capacity = capacity
        self.backend = backend if backend is not None else BackendSlots(None)
        self.backend.pools.append(self)
        self.in_flight = 0
        self.waiting = 0
        self.clock = _ServiceClock()
        self.started: deque[float] = deque()  # grant times of requests in flight, oldest first
        self._classes: list[dict[str, deque[_Waiter]]] = [{} for _ in PRIORITIES]
        self._vtime: dict[str, float] = {}
        self._now_v = 0.0
        self.last_release = 0.0
        self.refill_gaps: deque[float] = deque(maxlen=1024)  # seconds from a release to the next grant
        self.shared = False  # grants need a shared lease too; a dispatcher task hands them out
        self.released = asyncio.Event()
        self.dispatcher: asyncio.Task[None] | None = None
        self.kept = KeptPlaces()  # refused requesters told when to come back (see refusal_wait)

    # -- queue --------------------------------------------------------------------------------

    def _enqueue(self, waiter: _Waiter) -> None:
        queues = self._classes[waiter.priority]
        queue = queues.get(waiter.principal)
        if queue is None:
            queue = queues[waiter.principal] = deque()
            # An idle principal re-enters at the current virtual time, never earlier.
            self._vtime[waiter.principal] = max(self._vtime.get(waiter.principal, 0.0), self._now_v)
        queue.append(waiter)
        self.waiting += 1

    def peek(self) -> _Waiter | None:
        """The waiter ``_pop_next`` would serve next (fair order, priority first)."""
        for queues in self._classes:
            if queues:
                return queues[min(queues, key=self._vtime.__getitem__)][0]
        return None

    def _pop_next(self) -> _Waiter | None:
        for queues in self._classes:
            if not queues:
                continue
            principal = min(queues, key=self._vtime.__getitem__)
            queue = queues[principal]
            waiter = queue.popleft()
            if not queue:
                del queues[principal]
            self.waiting -= 1
            start = self._vtime[principal]
            self._now_v = max(self._now_v, start)
            self._vtime[principal] = start + 1.0 / waiter.weight
            return waiter
        return None

    def _remove(self, waiter: _Waiter) -> None:
        queues = self._classes[waiter.priority]
        queue = queues.get(waiter.principal)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self.waiting -= 1
            if not queue:
                del queues[waiter.principal]

    def has_room(self) -> bool:
        """A slot is free here and under the backend's cap."""
        return self.in_flight < self.capacity and self.backend.in_flight < self.backend.capacity

    def grant_now(self) -> float | None:
        """Take a slot at once if one is free and nobody is waiting for it; return the grant time."""
        if self.in_flight < self.capacity and not self.waiting and self.backend.in_flight < self.backend.capacity:
            return self._grant()
        return None

    def _grant(self) -> float:
        now = time.monotonic()
        self.in_flight += 1
        self.backend.in_flight += 1
        self.started.append(now)
        return now

    def dispatch(self) -> None:
        """Hand free slots to waiters, in fair order."""
        if self.shared:
            self.released.set()  # the shared dispatcher needs a lease first
            return
        while self.waiting and self.has_room():
            self.dispatch_one()

    def dispatch_one(self) -> None:
        """Grant the next waiter still waiting (the caller saw a free slot)."""
        while (waiter := self._pop_next()) is not None:
            if waiter.future.done():  # cancelled while we looked
                continue
            waiter.granted_at = self._grant()
            if self.last_release:
                self.refill_gaps.append(waiter.granted_at - self.last_release)
            waiter.future.set_result(None)
            return

    # -- estimates ------------------------------------------------------------------------------

    def service_time(self) -> float:
        """Mean seconds per request; before any finished, the age of the oldest in flight."""
        if self.clock.samples:
            return self.clock.mean
        if self.started:
            return time.monotonic() - self.started[0]
        return 0.0

    def expected_wait(self, ahead: int) -> float:
        """Seconds until a request with ``ahead`` requests in front of it gets a slot."""
        return (ahead + 1) * self.service_time() / self.capacity

    def position(self, waiter: _Waiter) -> int:
        """Requests the fair queue will serve before ``waiter``, as it stands (arrivals to come aside).

        Within a priority class, a principal's k-th waiter starts at virtual time ``v + k / weight``;
        waiters of other principals with an earlier start go first, as ``_pop_next`` would pick them.
        """
        ahead = 0
        for priority, queues in enumerate(self._classes):
            if priority < waiter.priority:
                ahead += sum(len(queue) for queue in queues.values())
                continue
            own = queues.get(waiter.principal)
            if own is None or waiter not in own:
                return ahead  # granted or gone
            index = own.index(waiter)
            start = self._vtime[waiter.principal] + index / waiter.weight
            earlier = True  # ties go to the principal met first, as ``min`` in ``_pop_next`` picks
            for principal, queue in queues.items():
                if principal == waiter.principal:
                    ahead += index
                    earlier = False
                    continue
                span = (start - self._vtime[principal]) * queue[0].weight
                if span >= 0:
                    ahead += min(len(queue), math.floor(span) + 1 if earlier else math.ceil(span))
            return ahead
        return ahead

    def refusal_wait(self, ahead: int, requester: tuple[str, str] | None = None) -> float:
        """Seconds to advertise in a refused request's ``Retry-After``: ``requester``'s turn among those
        refused before it, its place kept for then (see ``KeptPlaces``); without one, the queue's wait."""
        return self.kept.advise(self.expected_wait, ahead, requester)

    def release(self, granted_at: float, *, record: bool) -> None:
        self.in_flight -= 1
        backend = self.backend
        capped = backend.in_flight >= backend.capacity  # other pools may wait for this slot
        backend.in_flight -= 1
        try:
            self.started.remove(granted_at)
        except ValueError:
            pass
        now = time.monotonic()
        if record:
            self.clock.record(now - granted_at)
        self.last_release = now
        if capped and len(backend.pools) > 1:
            backend.dispatch()
        else:
            self.dispatch()

    def fail_waiters(self, error: Callable[[], GatewayError]) -> int:
        """Answer every waiting request with a fresh ``error()`` (the gateway is stopping); return how many."""
        failed = 0
        while (waiter := self._pop_next()) is not None:
            if not waiter.future.done():
                waiter.future.set_exception(error())
                failed += 1
        return failed


def _granted(waiter: _Waiter) -> bool:
    return waiter.future.done() and not waiter.future.cancelled()


class Lease:
    """A granted slot; release it exactly once when the upstream exchange ends."""

    __slots__ = ("_admission", "_pool", "_released", "granted_at", "holder", "position", "queued_for", "turn")

    def __init__(
        self,
        pool: Pool,
        granted_at: float,
        queued_for: float,
        holder: str = "",
        admission: Admission | None = None,
        position: int = 0,
    ) -> None:
        self._pool = pool
        self._admission = admission
        self.granted_at = granted_at
        self.queued_for = queued_for
        self.holder = holder
        self.position = position
        self.turn: Turn | None = None  # the model's turn on a swap-limited backend, given back with the slot
        self._released = False

    def release(self, *, ok: bool = True) -> None:
        if not self._released:
            self._released = True
            if self.holder and self._admission is not None:
                self._admission.release_shared(self._pool, self.holder)
            self._pool.release(self.granted_at, record=ok)
            if self.turn is not None:
                self.turn.release()

    def take_turn(self, turn: Turn) -> None:
        """Hold ``turn`` with the slot; the wait for it counts as queueing, its position as the one told."""
        self.turn = turn
        if turn.waited:
            self.queued_for += turn.waited
            self.position = turn.position


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
        self.fail_open = fail_open
        self._background: set[asyncio.Task[None]] = set()
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

    def _describe_slot(self, pool: Pool, waiter: _Waiter, backend: str) -> dict[str, object]:
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
        failed = sum(gate.fail_waiters(error) for gate in self.turns.values())
        return failed + sum(pool.fail_waiters(error) for pool in self.pools.values())

    async def aclose(self) -> None:
        """Wait for shared-lease releases still on their way to the store."""
        loop = asyncio.get_running_loop()
        pending = [task for task in self._background if task.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

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
        lease = _ResidentLease(pool, pool._grant(), 0.0)
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
        if self.shared is not None:
            return await self._admit_shared(pool, backend, principal, weight, priority, wait_limit, requester)
        now = time.monotonic()
        granted_at = pool.grant_now()
        if granted_at is not None:
            return Lease(pool, granted_at, 0.0)
        ahead = self.queued(backend)
        if self._full(pool, ahead, requester):
            raise self._queue_full(pool, ahead, requester)
        waiter = _Waiter(principal, weight, priority, now + wait_limit, asyncio.get_running_loop().create_future())
        pool._enqueue(waiter)
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
            if not _granted(waiter):
                pool._remove(waiter)
                raise GatewayError(
                    503,
                    f"no slot became free within {wait_limit:g}s; the backend is at capacity",
                    retry_after(pool.refusal_wait(pool.waiting, requester)),
                    reason="deadline",
                ) from None
        except asyncio.CancelledError:
            if _granted(waiter):
                pool.release(waiter.granted_at, record=False)
            else:
                pool._remove(waiter)
                waiter.future.cancel()
            raise
        finally:
            if describe is not None and self._queued_requests.get(request_id) is describe:
                del self._queued_requests[request_id]
        return Lease(pool, waiter.granted_at, waiter.granted_at - now, position=waiter.position)

    # -- shared (Redis) mode -------------------------------------------------------------------------
    #
    # Each worker keeps its own fair queue and never exceeds the capacity locally; a grant also
    # needs one of the pool's shared leases (and of its backend's, under ``backend_parallel``). A
    # dispatcher task per pool takes a lease whenever a local slot is free and hands it to the next
    # waiter in fair order. Fairness therefore holds exactly within a worker and approximately
    # across workers (a freed lease goes to whichever worker asks first; uvicorn spreads connections
    # evenly, so shares stay close to equal). A request costs the store one round trip in (the
    # lease, or else its queue place) and one out; a queued one, one more when it is granted.

    async def _shared_take(self, pool: Pool, holder: str, *, enter: QueuePlace | None = None, leave: str = "") -> int:
        assert self.shared is not None
        try:
            return await self.shared.take(
                pool.name,
                pool.capacity,
                holder,
                backend=pool.key.backend,
                backend_capacity=self.backend_parallel or 0,
                enter=enter,
                leave=leave,
            )
        except StateUnavailable as exc:
            if self.fail_open:
                return 1  # local limits only until the shared store is back
            raise GatewayError(
                503, f"shared state is unavailable: {exc}", retry_after(1.0), reason="state_unavailable"
            ) from exc

    def release_shared(self, pool: Pool, holder: str) -> None:
        assert self.shared is not None
        release = self.shared.release(
            pool.name, holder, backend=pool.key.backend, backend_capacity=self.backend_parallel or 0
        )
        task = asyncio.ensure_future(release)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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

    async def _admit_shared(
        self,
        pool: Pool,
        backend: str,
        principal: str,
        weight: float,
        priority: int,
        wait_limit: float,
        requester: tuple[str, str],
    ) -> Lease:
        assert self.shared is not None
        now = time.monotonic()
        ahead = self.queued(backend)
        if self._full(pool, ahead, requester):
            raise self._queue_full(pool, ahead, requester)
        place = QueuePlace(uuid.uuid4().hex, self.max_queue, now + wait_limit)
        placed = False
        if pool.has_room() and not pool.waiting:
            holder = uuid.uuid4().hex
            taken = await self._shared_take(pool, holder, enter=place)
            if taken == 1:
                if pool.has_room():
                    return Lease(pool, pool._grant(), 0.0, holder, self)
                self.release_shared(pool, holder)
            elif taken < 0:
                raise self._queue_full(pool, ahead, requester)
            else:
                placed = True
        if not placed:
            try:
                if not await self.shared.enter_queue(backend, place.waiter, self.max_queue, place.deadline):
                    raise self._queue_full(pool, ahead, requester)
                placed = True
            except StateUnavailable:
                if not self.fail_open:
                    raise GatewayError(
                        503, "shared state is unavailable", retry_after(1.0), reason="state_unavailable"
                    ) from None
        waiter = _Waiter(principal, weight, priority, now + wait_limit, asyncio.get_running_loop().create_future())
        waiter.place = place.waiter if placed else ""
        try:
            if self.closing is not None:  # the gateway began stopping while this request talked to the store
                raise self.closing()
            pool._enqueue(waiter)
            if pool.dispatcher is None or pool.dispatcher.done():
                pool.dispatcher = asyncio.ensure_future(self._dispatch_shared(pool))
            async with asyncio.timeout(wait_limit):
                await waiter.future
        except TimeoutError:
            if not _granted(waiter):
                pool._remove(waiter)
                raise GatewayError(
                    503,
                    f"no slot became free within {wait_limit:g}s; the backend is at capacity",
                    retry_after(pool.refusal_wait(pool.waiting, requester)),
                    reason="deadline",
                ) from None
        except asyncio.CancelledError:
            if _granted(waiter):
                Lease(pool, waiter.granted_at, 0.0, waiter.holder, self).release(ok=False)
            else:
                pool._remove(waiter)
                waiter.future.cancel()
            raise
        finally:
            if waiter.place:  # not given up with a grant: leave the queue now
                try:
                    await asyncio.shield(self.shared.leave_queue(backend, waiter.place))
                except (StateUnavailable, asyncio.CancelledError):
                    pass
        return Lease(pool, waiter.granted_at, waiter.granted_at - now, waiter.holder, self)

    async def _dispatch_shared(self, pool: Pool) -> None:
        assert self.shared is not None
        while pool.waiting:
            if not pool.has_room():
                pool.released.clear()
                await pool.released.wait()
                continue
            head = pool.peek()
            leave = head.place if head is not None else ""
            holder = uuid.uuid4().hex
            try:
                taken = await self._shared_take(pool, holder, leave=leave)
            except GatewayError as exc:  # fail-closed and the store is gone: no waiter here can be granted
                pool.fail_waiters(partial(GatewayError, exc.status, exc.message, exc.headers, reason=exc.reason))
                return
            if taken != 1:
                # Woken by the next release on this backend anywhere; the timeout covers leases that
                # expire instead (a worker that died holding them).
                await self.shared.wait_release(pool.key.backend, 0.5)
                continue
            if head is not None:
                head.place = ""  # given up with the grant
            waiter = pool._pop_next()
            while waiter is not None and waiter.future.done():
                waiter = pool._pop_next()
            if waiter is None or not pool.has_room():
                if waiter is not None:  # put it back at the front of its queue
                    pool._classes[waiter.priority].setdefault(waiter.principal, deque()).appendleft(waiter)
                    pool.waiting += 1
                self.release_shared(pool, holder)
                continue
            waiter.holder = holder
            waiter.granted_at = pool._grant()
            if pool.last_release:
                pool.refill_gaps.append(waiter.granted_at - pool.last_release)
            waiter.future.set_result(None)


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
