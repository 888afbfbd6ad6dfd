"""State shared by gateway workers and replicas.

Without ``redis_url`` every worker keeps its own state in memory (right for one process). With it,
slot leases, the queue bound and rate limits are kept in Redis so that all workers sharing it
together respect each backend's ``parallel`` and each principal's limits.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["LoadLock", "SharedSlots", "StateUnavailable"]


class StateUnavailable(Exception):
    """The shared store cannot be reached; callers fall back to local state or refuse (by setting)."""


class LoadLock:
    """Cross-worker single-flight; the in-process default always grants (the futures already coalesce)."""

    async def acquire(self, key: str, ttl: float) -> str | None:
        return "local"

    async def release(self, key: str, token: str) -> None:
        return None


class SharedSlots(Protocol):
    """Slot leases and queue places that hold across processes."""

    @property
    def healthy(self) -> bool: ...

    async def acquire(self, pool: str, capacity: int, holder: str) -> bool: ...

    async def release(self, pool: str, holder: str) -> None: ...

    async def wait_release(self, pool: str, within: float) -> None: ...

    async def enter_queue(self, backend: str, waiter: str, limit: int, deadline: float) -> bool: ...

    async def leave_queue(self, backend: str, waiter: str) -> None: ...
