"""Slots: per-runner pools of a backend, the fair queue in front of each, and the lease of a slot.

Ollama queues requests for a loaded model without bound and without timeout. So the gateway keeps at
most ``parallel`` requests in flight per model on a backend (``OLLAMA_NUM_PARALLEL`` is per loaded
model: each runner serves that many at once, and two loaded models run side by side), optionally at
most ``backend_parallel`` per backend across its models, and holds the rest here, where waiting is
cheap; Ollama then never queues internally.

Fairness is start-time fair queueing across principals: each principal has its own FIFO and a
virtual time that advances by ``1 / weight`` per request served; the next slot goes to the waiting
principal with the smallest virtual time, and a principal that was idle starts at the current
virtual time, so a flood from one user cannot push a newcomer back by more than one service per
slot. Priority classes are strict: interactive work is served before batch work.

A freed slot is handed straight to the next waiter's future (no polling). Each pool also measures
its service time, the basis of the wait it estimates for a request with others ahead of it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote

from ollama_asgi.errors import GatewayError
from ollama_asgi.retry_after import KeptPlaces, retry_after

if TYPE_CHECKING:
    from ollama_asgi.turns import ModelTurns, Turn

__all__ = ["BackendSlots", "granted", "Lease", "Pool", "PoolKey", "PRIORITIES", "Waiter"]

PRIORITIES = {"interactive": 0, "batch": 1}


@dataclass(slots=True, eq=False)
class Waiter:
    """A request queued for a slot of a pool; its future is resolved when a slot is granted to it."""

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

    Typed fields, so nothing splits a joined name apart again; ``name`` names the pool in the
    shared store and in logs.
    """

    backend: str
    model: str  # canonical model name; "" for requests that name none
    kind: str  # "generate", or "embed" where embeddings have slots of their own

    @property
    def name(self) -> str:
        """One string for the key, unambiguous whatever the parts hold (shared-state keys, logs)."""
        return "/".join(quote(part, safe="") for part in self)


class BackendSlots:
    """One backend's slots: its pools by (model, kind), their cap together (``backend_parallel``)
    and the gate of its model turns. Its ``Backend`` holds it, so its pools go with the backend.

    A slot freed under the cap goes to the pool whose next waiter comes first (priority, then
    arrival), so the fair order within each pool holds and no model's queue is passed over.
    """

    __slots__ = ("capacity", "in_flight", "name", "parallel", "pools", "turns")

    def __init__(self, name: str = "", parallel: int = 1, capacity: int | None = None) -> None:
        self.name = name
        self.parallel = parallel  # each model's runner's slots, as OLLAMA_NUM_PARALLEL
        self.capacity = capacity if capacity is not None else 1 << 62  # none: no cap beyond each pool's
        self.in_flight = 0
        # Keyed by (model, kind), so the hot path finds a pool with one lookup of a plain tuple.
        self.pools: dict[tuple[str, str], Pool] = {}
        self.turns: ModelTurns | None = None  # made on first use where the queue is grouped by model

    def dispatch(self) -> None:
        """Hand slots freed under the cap to waiters of the backend's pools, in arrival order."""
        while self.in_flight < self.capacity:
            best: Pool | None = None
            best_rank = (0, 0.0)
            for pool in self.pools.values():
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
        self.backend = backend if backend is not None else BackendSlots(self.key.backend)
        self.backend.pools[self.key.model, self.key.kind] = self
        self.in_flight = 0
        self.waiting = 0
        self.clock = _ServiceClock()
        self.started: deque[float] = deque()  # grant times of requests in flight, oldest first
        self._classes: list[dict[str, deque[Waiter]]] = [{} for _ in PRIORITIES]
        self._vtime: dict[str, float] = {}
        self._now_v = 0.0
        self.last_release = 0.0
        self.refill_gaps: deque[float] = deque(maxlen=1024)  # seconds from a release to the next grant
        self.shared = False  # grants need a shared lease too; a dispatcher task hands them out
        self.released = asyncio.Event()
        self.dispatcher: asyncio.Task[None] | None = None
        self.kept = KeptPlaces()  # refused requesters told when to come back (see refusal_wait)

    # -- queue --------------------------------------------------------------------------------

    def enqueue(self, waiter: Waiter) -> None:
        """Queue ``waiter`` behind its principal's earlier ones."""
        queues = self._classes[waiter.priority]
        queue = queues.get(waiter.principal)
        if queue is None:
            queue = queues[waiter.principal] = deque()
            # An idle principal re-enters at the current virtual time, never earlier.
            self._vtime[waiter.principal] = max(self._vtime.get(waiter.principal, 0.0), self._now_v)
        queue.append(waiter)
        self.waiting += 1

    def peek(self) -> Waiter | None:
        """The waiter ``pop_next`` would serve next (fair order, priority first)."""
        for queues in self._classes:
            if queues:
                return queues[min(queues, key=self._vtime.__getitem__)][0]
        return None

    def pop_next(self) -> Waiter | None:
        """Take the next waiter out of the queue, in fair order, advancing its principal's virtual time."""
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

    def remove(self, waiter: Waiter) -> None:
        """Take ``waiter`` out of the queue (its deadline passed, or it was cancelled)."""
        queues = self._classes[waiter.priority]
        queue = queues.get(waiter.principal)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self.waiting -= 1
            if not queue:
                del queues[waiter.principal]

    async def await_grant(
        self, waiter: Waiter, wait_limit: float, requester: tuple[str, str], give_back: Callable[[], None]
    ) -> None:
        """Wait for ``waiter``'s slot, queued here, within ``wait_limit``: past it, a 503 with the
        Retry-After a refused requester is told. Cancelled, it leaves the queue, or, had the slot
        come meanwhile, gives it back (``give_back``: locally, or to the shared store)."""
        try:
            async with asyncio.timeout(wait_limit):
                await waiter.future
        except TimeoutError:
            if not granted(waiter):
                self.remove(waiter)
                raise GatewayError(
                    503,
                    f"no slot became free within {wait_limit:g}s; the backend is at capacity",
                    retry_after(self.refusal_wait(self.waiting, requester)),
                    reason="deadline",
                ) from None
        except asyncio.CancelledError:
            if granted(waiter):
                give_back()
            else:
                self.remove(waiter)
                waiter.future.cancel()
            raise

    def put_back(self, waiter: Waiter) -> None:
        """Return a waiter just taken by ``pop_next`` to the front of its queue (no slot after all)."""
        self._classes[waiter.priority].setdefault(waiter.principal, deque()).appendleft(waiter)
        self.waiting += 1

    def has_room(self) -> bool:
        """A slot is free here and under the backend's cap."""
        return self.in_flight < self.capacity and self.backend.in_flight < self.backend.capacity

    def grant_now(self) -> float | None:
        """Take a slot at once if one is free and nobody is waiting for it; return the grant time."""
        if self.in_flight < self.capacity and not self.waiting and self.backend.in_flight < self.backend.capacity:
            return self.grant()
        return None

    def grant(self) -> float:
        """Take a slot (the caller saw one free); return the grant time."""
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
        while (waiter := self.pop_next()) is not None:
            if waiter.future.done():  # cancelled while we looked
                continue
            waiter.granted_at = self.grant()
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

    def position(self, waiter: Waiter) -> int:
        """Requests the fair queue will serve before ``waiter``, as it stands (arrivals to come aside).

        Within a priority class, a principal's k-th waiter starts at virtual time ``v + k / weight``;
        waiters of other principals with an earlier start go first, as ``pop_next`` would pick them.
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
            earlier = True  # ties go to the principal met first, as ``min`` in ``pop_next`` picks
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
        while (waiter := self.pop_next()) is not None:
            if not waiter.future.done():
                waiter.future.set_exception(error())
                failed += 1
        return failed


def granted(waiter: Waiter) -> bool:
    """A slot was granted to ``waiter`` (whether or not it has seen it yet)."""
    return waiter.future.done() and not waiter.future.cancelled()


class Lease:
    """A granted slot; release it exactly once when the upstream exchange ends."""

    __slots__ = ("_pool", "_release_shared", "_released", "granted_at", "holder", "position", "queued_for", "turn")

    def __init__(
        self,
        pool: Pool,
        granted_at: float,
        queued_for: float,
        holder: str = "",
        release_shared: Callable[[Pool, str], None] | None = None,
        position: int = 0,
    ) -> None:
        self._pool = pool
        self._release_shared = release_shared  # gives ``holder``, a shared lease, back to the store
        self.granted_at = granted_at
        self.queued_for = queued_for
        self.holder = holder
        self.position = position
        self.turn: Turn | None = None  # the model's turn on a swap-limited backend, given back with the slot
        self._released = False

    def release(self, *, ok: bool = True) -> None:
        if not self._released:
            self._released = True
            if self.holder and self._release_shared is not None:
                self._release_shared(self._pool, self.holder)
            self._pool.release(self.granted_at, record=ok)
            if self.turn is not None:
                self.turn.release()

    def take_turn(self, turn: Turn) -> None:
        """Hold ``turn`` with the slot; the wait for it counts as queueing, its position as the one told."""
        self.turn = turn
        if turn.waited:
            self.queued_for += turn.waited
            self.position = turn.position
