"""State shared by gateway workers and replicas.

Without ``redis_url`` every worker keeps its own state in memory (right for one process). With it,
slot leases, the queue bound and rate limits are kept in Redis so that all workers sharing it
together respect each backend's ``parallel`` and each principal's limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["LoadLock", "QueuePlace", "SharedSlots", "StateUnavailable"]


class StateUnavailable(Exception):
    """The shared store cannot be reached; callers fall back to local state or refuse (by setting)."""


class LoadLock:
    """Cross-worker single-flight; the in-process default always grants (the futures already coalesce)."""

    async def acquire(self, key: str, ttl: float) -> str | None:
        return "local"

    async def release(self, key: str, token: str) -> None:
        return None


@dataclass(frozen=True, slots=True)
class QueuePlace:
    """A place in a backend's shared queue bound: ``waiter`` holds it until ``deadline`` (monotonic)."""

    waiter: str
    limit: int
    deadline: float


class SharedSlots(Protocol):
    """Slot leases and queue places that hold across processes.

    ``take`` is the one call on a request's way in: the slot, or else a queue place, in one round
    trip; ``release`` the one on its way out.
    """

    @property
    def healthy(self) -> bool: ...

    async def take(
        self,
        pool: str,
        capacity: int,
        holder: str,
        *,
        backend: str = "",
        backend_capacity: int = 0,
        enter: QueuePlace | None = None,
        leave: str = "",
    ) -> int: ...

    async def acquire(self, pool: str, capacity: int, holder: str) -> bool: ...

    async def release(self, pool: str, holder: str, *, backend: str = "", backend_capacity: int = 0) -> None: ...

    async def wait_release(self, backend: str, within: float) -> None: ...

    async def enter_queue(self, backend: str, waiter: str, limit: int, deadline: float) -> bool: ...

    async def leave_queue(self, backend: str, waiter: str) -> None: ...
