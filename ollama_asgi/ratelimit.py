"""Per-principal rate limits: requests per minute and tokens per minute, as token buckets.

Requests are charged when admitted; tokens are charged after the answer, from the counts Ollama
reports in its final chunk, so the token bucket may go negative and then refuses until it refills.
The same arithmetic runs in memory (one process) or in Redis (``state.redis``), so the limits and
the ``Retry-After`` they produce do not depend on where the state lives.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

__all__ = ["Bucket", "Decision", "MemoryRateLimiter", "rate_limit_headers"]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: float  # seconds until the next unit is available; 0 when allowed
    reset: float  # seconds until the bucket is full again
    kind: str  # "requests" or "tokens"


class Bucket:
    """A token bucket that holds ``limit`` units and refills ``limit`` per minute."""

    __slots__ = ("level", "limit", "stamp")

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.level = float(limit)
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(float(self.limit), self.level + (now - self.stamp) * self.limit / 60.0)
        self.stamp = now

    def decide(self, cost: float, kind: str) -> Decision:
        rate = self.limit / 60.0
        if self.level >= cost or (cost > self.limit and self.level >= self.limit):
            self.level -= cost
            return Decision(
                True, self.limit, max(0, math.floor(self.level)), 0.0, (self.limit - self.level) / rate, kind
            )
        return Decision(
            False,
            self.limit,
            max(0, math.floor(self.level)),
            (min(cost, self.limit) - self.level) / rate,
            (self.limit - self.level) / rate,
            kind,
        )


class MemoryRateLimiter:
    """Buckets in this process's memory; right for a single worker."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def _bucket(self, key: str, kind: str, limit: int, now: float) -> Bucket:
        bucket = self._buckets.get((key, kind))
        if bucket is None or bucket.limit != limit:
            bucket = self._buckets[(key, kind)] = Bucket(limit, now)
        bucket.refill(now)
        return bucket

    async def check(self, key: str, rpm: int | None, tpm: int | None) -> Decision | None:
        """Charge one request; refuse when either bucket is empty. None when no limit applies."""
        now = time.monotonic()
        decision = None
        if tpm:
            tokens = self._bucket(key, "tokens", tpm, now)
            if tokens.level <= 0:
                return Decision(
                    False, tpm, 0, -tokens.level / (tpm / 60.0) + 1e-3, (tpm - tokens.level) / (tpm / 60.0), "tokens"
                )
        if rpm:
            decision = self._bucket(key, "requests", rpm, now).decide(1, "requests")
        return decision

    async def charge_tokens(self, key: str, tpm: int | None, tokens: int) -> None:
        if tpm and tokens > 0:
            bucket = self._bucket(key, "tokens", tpm, time.monotonic())
            bucket.level -= tokens


def rate_limit_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """OpenAI-style ``X-RateLimit-*`` headers, plus ``Retry-After`` when refused."""
    kind = decision.kind.encode()
    headers = [
        (b"x-ratelimit-limit-" + kind, str(decision.limit).encode()),
        (b"x-ratelimit-remaining-" + kind, str(decision.remaining).encode()),
        (b"x-ratelimit-reset-" + kind, f"{decision.reset:.1f}s".encode()),
    ]
    if not decision.allowed:
        headers.append((b"retry-after", str(max(1, math.ceil(decision.retry_after))).encode()))
    return headers
