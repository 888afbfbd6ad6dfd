"""What a client is told about waiting: the ``Retry-After`` of a refusal and the queue headers.

Ollama's 503 says nothing about when to come back, and a client told too little either hammers the
gateway or gives up. Every ``Retry-After`` the gateway computes for a full queue or a missed deadline
comes from here: the header itself (``retry_after``), the turn a refused requester is given among
those refused before it (``KeptPlaces``), and what an answer that queued says of its wait
(``queue_headers``). The wait behind the advice is a pool's estimate (``Pool.expected_wait``).
Other refusals name their own wait: a rate limit's (``ratelimit``), no backend able to answer
(``placement``: its breakers' cooldown) and Ollama's own busy answer (``upstream_retry_after``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from heapq import heapify, heappop, heappush

__all__ = ["KeptPlaces", "queue_headers", "retry_after"]

_MAX_PROMISED = 4096  # refused requests remembered until the time they were told to come back
_MAX_ADVICE = 600.0  # seconds: beyond this a Retry-After says nothing a client can plan with
_EARLY = 0.5  # seconds a refused client may come back before its time and find its place kept
_GRACE = 2.0  # ... and after it, at least (a client sleeps Retry-After, then connects and sends);
# as long again as it was told, for longer waits: a loaded client or gateway comes back late


def retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    """A ``Retry-After`` header: whole seconds, rounded up, at least 1."""
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]


def queue_headers(waited: float, position: int) -> list[tuple[bytes, bytes]]:
    """``X-Queue-Wait`` (seconds waited) and ``X-Queue-Position`` (requests ahead on arrival), sent
    on answers that queued, so a client can see what the wait was made of."""
    return [(b"x-queue-wait", f"{waited:.3f}".encode()), (b"x-queue-position", str(position).encode())]


class KeptPlaces:
    """Refused requesters of one pool, when each was told to come back, and the place kept for it.

    Under sustained overload the queue is full and a place in it frees each time a slot does,
    about every ``service_time / capacity`` seconds. A refused requester (principal, client host)
    is promised the place after those promised to requesters refused before it: its advice is
    its turn among them, and when it comes back at that time (from ``_EARLY`` before to
    ``_GRACE`` or the wait again after) its place is kept for it (``claim``). So the
    advice is the wait a client that obeys it sees, whatever the overload; one that asks again
    sooner is told the time left, keeping its turn and pushing nobody back.
    """

    __slots__ = ("_promise_times", "_promised")

    def __init__(self) -> None:
        # Refused requesters and when they were told to come back, with a heap of those times to
        # forget them once the time has passed.
        self._promised: dict[tuple[str, str], tuple[float, float]] = {}  # requester -> (when, kept until)
        self._promise_times: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        """Requesters remembered (told when to come back, and that time not long past)."""
        return len(self._promised)

    def advise(
        self, expected_wait: Callable[[int], float], ahead: int, requester: tuple[str, str] | None = None
    ) -> float:
        """Seconds to advertise in a refused request's ``Retry-After``, and a place kept for then.

        ``expected_wait(n)`` is the pool's wait with ``n`` requests ahead. Without a requester, only
        the queue (``ahead``) counts.
        """
        now = time.monotonic()
        self._forget_promises(now)
        if requester is None:
            return min(expected_wait(ahead), _MAX_ADVICE)
        promised = self._promised
        kept = promised.get(requester)
        if kept is not None and now < kept[0] - _EARLY:
            return kept[0] - now  # back before its time: its turn stays where it was
        others = len(promised) - (1 if kept is not None else 0)
        wait = min(expected_wait(others), _MAX_ADVICE)
        if kept is not None or len(promised) < _MAX_PROMISED:
            told = max(1, math.ceil(wait))  # as Retry-After says it
            until = now + told + max(_GRACE, told)
            promised[requester] = (now + told, until)
            heappush(self._promise_times, (until, requester))
            if len(self._promise_times) > 4 * _MAX_PROMISED:  # re-promised requesters leave stale entries
                self._promise_times = [(at[1], key) for key, at in promised.items()]
                heapify(self._promise_times)
        return wait

    def _forget_promises(self, now: float) -> None:
        promised = self._promised
        times = self._promise_times
        while times and times[0][0] < now:
            until, key = heappop(times)
            kept = promised.get(key)
            if kept is not None and kept[1] == until:
                del promised[key]

    def claim(self, requester: tuple[str, str]) -> bool:
        """``requester`` comes back when it was told to: its kept place is its own (once)."""
        kept = self._promised.get(requester)
        if kept is None:
            return False
        now = time.monotonic()
        if kept[0] - _EARLY <= now <= kept[1]:
            del self._promised[requester]
            return True
        return False

    def held(self) -> int:
        """Places kept for requesters whose time has come and who are not back yet."""
        if not self._promised:
            return 0
        now = time.monotonic()
        self._forget_promises(now)
        return sum(1 for when, _ in self._promised.values() if when - _EARLY <= now)
