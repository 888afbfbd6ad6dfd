"""Admission control: per-backend slots, a bounded fair queue with deadlines, a truthful Retry-After.

Ollama queues requests for a loaded model without bound and without timeout, and its 503 says
nothing about when to come back. So the gateway keeps at most ``parallel`` requests in flight per
backend (Ollama then never queues internally) and holds the rest here, where waiting is cheap.

Fairness is start-time fair queueing across principals: each principal has its own FIFO and a
virtual time that advances by ``1 / weight`` per request served; the next slot goes to the waiting
principal with the smallest virtual time, and a principal that was idle starts at the current
virtual time, so a flood from one user cannot push a newcomer back by more than one service per
slot. Priority classes are strict: interactive work is served before batch work.

A freed slot is handed straight to the next waiter's future (no polling), and everything a
request needs before it reaches Ollama (parse, auth, policy, placement) happens before it queues.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from heapq import heapify, heappop, heappush

from ollama_asgi.errors import GatewayError
from ollama_asgi.state import SharedSlots, StateUnavailable

logger = logging.getLogger("ollama_asgi.admission")

__all__ = ["Admission", "Lease", "Pool", "PRIORITIES"]

PRIORITIES = {"interactive": 0, "batch": 1}
_MAX_PROMISED = 4096  # refused requests remembered until the time they were told to come back
_MAX_ADVICE = 600.0  # seconds: beyond this a Retry-After says nothing a client can plan with


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


class Pool:
    """The slots of one backend for one kind of work, and the fair queue in front of them."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
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
        # Refused requesters and when they were told to come back (see refusal_wait), with a heap
        # of those times to forget them once the time has passed.
        self._promised: dict[tuple[str, str], float] = {}
        self._promise_times: list[tuple[float, tuple[str, str]]] = []

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

    def grant_now(self) -> float | None:
        """Take a slot at once if one is free and nobody is waiting for it; return the grant time."""
        if self.in_flight < self.capacity and not self.waiting:
            return self._grant()
        return None

    def _grant(self) -> float:
        now = time.monotonic()
        self.in_flight += 1
        self.started.append(now)
        return now

    def dispatch(self) -> None:
        """Hand free slots to waiters, in fair order."""
        if self.shared:
            self.released.set()  # the shared dispatcher needs a lease first
            return
        while self.in_flight < self.capacity and self.waiting:
            waiter = self._pop_next()
            if waiter is None:
                return
            if waiter.future.done():  # cancelled while we looked
                continue
            waiter.granted_at = self._grant()
            if self.last_release:
                self.refill_gaps.append(waiter.granted_at - self.last_release)
            waiter.future.set_result(None)

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

    def refusal_wait(self, ahead: int, requester: tuple[str, str] | None = None) -> float:
        """Seconds to advertise in a refused request's ``Retry-After``.

        Under sustained overload the queue refills as soon as places free up, so the ``ahead``
        requests queued now are not all that stands before this requester: so does every other
        requester refused earlier and told to come back before it. Counting those, until the time
        they were given passes, makes the advice grow with the overload as the real wait does,
        instead of staying at one queue's drain time. ``requester`` (principal, client host) is
        counted once however often it asks: a client that polls instead of waiting must not
        inflate everyone's advice. Without one, only the queue counts.
        """
        now = time.monotonic()
        promised = self._promised
        times = self._promise_times
        while times and times[0][0] <= now:
            when, key = heappop(times)
            if promised.get(key) == when:
                del promised[key]
        others = len(promised) - (1 if requester in promised else 0)
        wait = min(self.expected_wait(ahead + others), _MAX_ADVICE)
        if requester is not None and (requester in promised or len(promised) < _MAX_PROMISED):
            promised[requester] = now + wait
            heappush(times, (now + wait, requester))
            if len(times) > 4 * _MAX_PROMISED:  # re-promised requesters leave stale entries behind
                self._promise_times = [(when, key) for key, when in promised.items()]
                heapify(self._promise_times)
        return wait

    def release(self, granted_at: float, *, record: bool) -> None:
        self.in_flight -= 1
        try:
            self.started.remove(granted_at)
        except ValueError:
            pass
        now = time.monotonic()
        if record:
            self.clock.record(now - granted_at)
        self.last_release = now
        self.dispatch()

    def fail_waiters(self, error: Callable[[], GatewayError]) -> int:
        """Answer every waiting request with a fresh ``error()`` (the gateway is stopping); return how many."""
        failed = 0
        while (waiter := self._pop_next()) is not None:
            if not waiter.future.done():
                waiter.future.set_exception(error())
                failed += 1
        return failed


def retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    """A ``Retry-After`` header: whole seconds, rounded up, at least 1."""
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]


def _granted(waiter: _Waiter) -> bool:
    return waiter.future.done() and not waiter.future.cancelled()


class Lease:
    """A granted slot; release it exactly once when the upstream exchange ends."""

    __slots__ = ("_admission", "_pool", "_released", "granted_at", "holder", "queued_for")

    def __init__(
        self, pool: Pool, granted_at: float, queued_for: float, holder: str = "", admission: Admission | None = None
    ) -> None:
        self._pool = pool
        self._admission = admission
        self.granted_at = granted_at
        self.queued_for = queued_for
        self.holder = holder
        self._released = False

    def release(self, *, ok: bool = True) -> None:
        if not self._released:
            self._released = True
            if self.holder and self._admission is not None:
                self._admission.release_shared(self._pool, self.holder)
            self._pool.release(self.granted_at, record=ok)


class Admission:
    """All pools of all backends, the per-backend queue bound, and the one entry point ``admit``."""

    def __init__(
        self,
        *,
        parallel: int,
        embed_parallel: int | None,
        max_queue: int,
        shared: SharedSlots | None = None,
        fail_open: bool = True,
        capacities: dict[str, int] | None = None,
    ) -> None:
        self.parallel = parallel
        self.capacities = capacities or {}  # per-backend `parallel` overrides
        self.embed_parallel = embed_parallel
        self.max_queue = max_queue
        self.pools: dict[str, Pool] = {}
        self.shared = shared
        self.fail_open = fail_open
        self._background: set[asyncio.Task[None]] = set()
        self.closing: Callable[[], GatewayError] | None = None  # set once the gateway stops taking work

    def close(self, error: Callable[[], GatewayError]) -> int:
        """Refuse new requests and fail every queued one with ``error()``; slots in use stay until released."""
        self.closing = error
        return sum(pool.fail_waiters(error) for pool in self.pools.values())

    async def aclose(self) -> None:
        """Wait for shared-lease releases still on their way to the store."""
        loop = asyncio.get_running_loop()
        pending = [task for task in self._background if task.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def pool(self, backend: str, kind: str) -> Pool:
        key = backend if kind != "embed" or self.embed_parallel is None else backend + "#embed"
        pool = self.pools.get(key)
        if pool is None:
            parallel = self.capacities.get(backend, self.parallel)
            capacity = parallel if key == backend else self.embed_parallel or parallel
            pool = self.pools[key] = Pool(key, capacity)
            pool.shared = self.shared is not None
        return pool

    def queued(self, backend: str) -> int:
        return sum(p.waiting for name, p in self.pools.items() if name.split("#", 1)[0] == backend)

    def try_admit(self, backend: str, kind: str) -> Lease | None:
        """A free slot at once, when nobody waits for it; None sends the caller through ``admit``.

        Most requests find a slot free: this takes it without a coroutine or a clock read more.
        """
        if self.closing is not None or self.shared is not None:
            return None
        pool = self.pool(backend, kind)
        granted_at = pool.grant_now()
        return None if granted_at is None else Lease(pool, granted_at, 0.0)

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
    ) -> Lease:
        """Wait for a slot; raise a 503 ``GatewayError`` with Retry-After when none comes in time.

        ``client`` (the caller's host) tells requesters of one principal apart for Retry-After.
        """
        if self.closing is not None:
            raise self.closing()
        pool = self.pool(backend, kind)
        requester = (principal, client)
        if self.shared is not None:
            return await self._admit_shared(pool, backend, principal, weight, priority, wait_limit, requester)
        now = time.monotonic()
        granted_at = pool.grant_now()
        if granted_at is not None:
            return Lease(pool, granted_at, 0.0)
        ahead = self.queued(backend)
        if ahead >= self.max_queue:
            raise GatewayError(
                503,
                f"the gateway's queue for this backend is full ({self.max_queue} waiting); try again later",
                retry_after(pool.refusal_wait(ahead, requester)),
                reason="queue_full",
            )
        waiter = _Waiter(principal, weight, priority, now + wait_limit, asyncio.get_running_loop().create_future())
        pool._enqueue(waiter)
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
        return Lease(pool, waiter.granted_at, waiter.granted_at - now)

    # -- shared (Redis) mode -------------------------------------------------------------------------
    #
    # Each worker keeps its own fair queue and never exceeds the capacity locally; a grant also
    # needs one of the backend's shared leases. A dispatcher task per pool takes a lease whenever a
    # local slot is free and hands it to the next waiter in fair order. Fairness therefore holds
    # exactly within a worker and approximately across workers (a freed lease goes to whichever
    # worker asks first; uvicorn spreads connections evenly, so shares stay close to equal).

    async def _shared_lease(self, pool: Pool, holder: str) -> bool:
        assert self.shared is not None
        try:
            return await self.shared.acquire(pool.name, pool.capacity, holder)
        except StateUnavailable as exc:
            if self.fail_open:
                return True  # local limits only until the shared store is back
            raise GatewayError(
                503, f"shared state is unavailable: {exc}", retry_after(1.0), reason="state_unavailable"
            ) from exc

    def release_shared(self, pool: Pool, holder: str) -> None:
        assert self.shared is not None
        task = asyncio.ensure_future(self.shared.release(pool.name, holder))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
        if pool.in_flight < pool.capacity and not pool.waiting:
            holder = uuid.uuid4().hex
            if await self._shared_lease(pool, holder):
                if pool.in_flight < pool.capacity:
                    return Lease(pool, pool._grant(), 0.0, holder, self)
                self.release_shared(pool, holder)
        ahead = self.queued(backend)
        waiter_id = uuid.uuid4().hex
        full = ahead >= self.max_queue
        if not full:
            try:
                full = not await self.shared.enter_queue(backend, waiter_id, self.max_queue, now + wait_limit)
            except StateUnavailable:
                if not self.fail_open:
                    raise GatewayError(
                        503, "shared state is unavailable", retry_after(1.0), reason="state_unavailable"
                    ) from None
        if full:
            raise GatewayError(
                503,
                f"the gateway's queue for this backend is full ({self.max_queue} waiting); try again later",
                retry_after(pool.refusal_wait(ahead, requester)),
                reason="queue_full",
            )
        if self.closing is not None:  # the gateway began stopping while this request talked to the store
            try:
                await self.shared.leave_queue(backend, waiter_id)
            except StateUnavailable:
                pass
            raise self.closing()
        waiter = _Waiter(principal, weight, priority, now + wait_limit, asyncio.get_running_loop().create_future())
        pool._enqueue(waiter)
        if pool.dispatcher is None or pool.dispatcher.done():
            pool.dispatcher = asyncio.ensure_future(self._dispatch_shared(pool))
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
                Lease(pool, waiter.granted_at, 0.0, waiter.holder, self).release(ok=False)
            else:
                pool._remove(waiter)
                waiter.future.cancel()
            raise
        finally:
            try:
                await asyncio.shield(self.shared.leave_queue(backend, waiter_id))
            except (StateUnavailable, asyncio.CancelledError):
                pass
        return Lease(pool, waiter.granted_at, waiter.granted_at - now, waiter.holder, self)

    async def _dispatch_shared(self, pool: Pool) -> None:
        assert self.shared is not None
        while pool.waiting:
            if pool.in_flight >= pool.capacity:
                pool.released.clear()
                await pool.released.wait()
                continue
            holder = uuid.uuid4().hex
            try:
                leased = await self._shared_lease(pool, holder)
            except GatewayError as exc:  # fail-closed and the store is gone: no waiter here can be granted
                pool.fail_waiters(partial(GatewayError, exc.status, exc.message, exc.headers, reason=exc.reason))
                return
            if not leased:
                await self.shared.wait_release(pool.name, 0.05)
                continue
            waiter = pool._pop_next()
            while waiter is not None and waiter.future.done():
                waiter = pool._pop_next()
            if waiter is None or pool.in_flight >= pool.capacity:
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
