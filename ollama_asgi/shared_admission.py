"""Admission across workers: a slot is granted only with one of its pool's leases in the shared store.

With ``redis_url``, several workers admit requests to the same backends. Each worker keeps its own
fair queue and never exceeds the capacity locally; a grant also needs one of the pool's shared
leases (and of its backend's, under ``backend_parallel``). A dispatcher task per pool takes a lease
whenever a local slot is free and hands it to the next waiter in fair order. Fairness therefore
holds exactly within a worker and approximately across workers (a freed lease goes to whichever
worker asks first; uvicorn spreads connections evenly, so shares stay close to equal). A request
costs the store one round trip in (the lease, or else its queue place) and one out; a queued one,
one more when it is granted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from functools import partial

from ollama_asgi.errors import GatewayError
from ollama_asgi.retry_after import retry_after
from ollama_asgi.slots import Lease, Pool, Waiter
from ollama_asgi.state import QueuePlace, SharedSlots, StateUnavailable

__all__ = ["SharedAdmission"]


class SharedAdmission:
    """``Admission``'s way to a slot when workers share state: the store's leases and queue places."""

    def __init__(self, store: SharedSlots, *, max_queue: int, fail_open: bool, backend_parallel: int | None) -> None:
        self.store = store
        self.max_queue = max_queue
        self.fail_open = fail_open  # the store unreachable: local limits only, rather than a 503
        self.backend_parallel = backend_parallel
        self.closing: Callable[[], GatewayError] | None = None  # set once the gateway stops taking work
        self._background: set[asyncio.Task[None]] = set()

    async def take(self, pool: Pool, holder: str, *, enter: QueuePlace | None = None, leave: str = "") -> int:
        """The store's ``take`` for ``pool`` (1: the lease is ``holder``'s), or local limits only while the
        store is unreachable and ``fail_open``; otherwise a 503."""
        try:
            return await self.store.take(
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

    def release(self, pool: Pool, holder: str) -> None:
        """Give a shared lease back, in the background (the request's answer need not wait for it)."""
        release = self.store.release(
            pool.name, holder, backend=pool.key.backend, backend_capacity=self.backend_parallel or 0
        )
        task = asyncio.ensure_future(release)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Wait for shared-lease releases still on their way to the store."""
        loop = asyncio.get_running_loop()
        pending = [task for task in self._background if task.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def admit(
        self,
        pool: Pool,
        backend: str,
        principal: str,
        weight: float,
        priority: int,
        wait_limit: float,
        requester: tuple[str, str],
        queue_full: Callable[[], GatewayError],
    ) -> Lease:
        """Wait for a slot of ``pool`` and a shared lease; ``queue_full()`` is raised when the store's
        queue bound refuses the request (the caller checked the local one)."""
        now = time.monotonic()
        place = QueuePlace(uuid.uuid4().hex, self.max_queue, now + wait_limit)
        placed = False
        if pool.has_room() and not pool.waiting:
            holder = uuid.uuid4().hex
            taken = await self.take(pool, holder, enter=place)
            if taken == 1:
                if pool.has_room():
                    return Lease(pool, pool.grant(), 0.0, holder, self.release)
                self.release(pool, holder)
            elif taken < 0:
                raise queue_full()
            else:
                placed = True
        if not placed:
            try:
                if not await self.store.enter_queue(backend, place.waiter, self.max_queue, place.deadline):
                    raise queue_full()
                placed = True
            except StateUnavailable:
                if not self.fail_open:
                    raise GatewayError(
                        503, "shared state is unavailable", retry_after(1.0), reason="state_unavailable"
                    ) from None
        waiter = Waiter(principal, weight, priority, now + wait_limit, asyncio.get_running_loop().create_future())
        waiter.place = place.waiter if placed else ""
        try:
            if self.closing is not None:  # the gateway began stopping while this request talked to the store
                raise self.closing()
            pool.enqueue(waiter)
            if pool.dispatcher is None or pool.dispatcher.done():
                pool.dispatcher = asyncio.ensure_future(self._dispatch(pool))
            await pool.await_grant(
                waiter,
                wait_limit,
                requester,
                lambda: Lease(pool, waiter.granted_at, 0.0, waiter.holder, self.release).release(ok=False),
            )
        finally:
            if waiter.place:  # not given up with a grant: leave the queue now
                try:
                    await asyncio.shield(self.store.leave_queue(backend, waiter.place))
                except (StateUnavailable, asyncio.CancelledError):
                    pass
        return Lease(pool, waiter.granted_at, waiter.granted_at - now, waiter.holder, self.release)

    async def _dispatch(self, pool: Pool) -> None:
        while pool.waiting:
            if not pool.has_room():
                pool.released.clear()
                await pool.released.wait()
                continue
            head = pool.peek()
            leave = head.place if head is not None else ""
            holder = uuid.uuid4().hex
            try:
                taken = await self.take(pool, holder, leave=leave)
            except GatewayError as exc:  # fail-closed and the store is gone: no waiter here can be granted
                pool.fail_waiters(partial(GatewayError, exc.status, exc.message, exc.headers, reason=exc.reason))
                return
            if taken != 1:
                # Woken by the next release on this backend anywhere; the timeout covers leases that
                # expire instead (a worker that died holding them).
                await self.store.wait_release(pool.key.backend, 0.5)
                continue
            if head is not None:
                head.place = ""  # given up with the grant
            waiter = pool.pop_next()
            while waiter is not None and waiter.future.done():
                waiter = pool.pop_next()
            if waiter is None or not pool.has_room():
                if waiter is not None:
                    pool.put_back(waiter)
                self.release(pool, holder)
                continue
            waiter.holder = holder
            waiter.granted_at = pool.grant()
            if pool.last_release:
                pool.refill_gaps.append(waiter.granted_at - pool.last_release)
            waiter.future.set_result(None)
