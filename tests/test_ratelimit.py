from __future__ import annotations

import pytest

from ollama_asgi.ratelimit import MemoryRateLimiter, rate_limit_headers


async def test_requests_per_minute_refuse_the_request_over_the_limit() -> None:
    limiter = MemoryRateLimiter()
    decisions = [await limiter.check("alice", 3, None) for _ in range(4)]
    assert [d.allowed for d in decisions if d] == [True, True, True, False]
    refused = decisions[-1]
    assert refused is not None
    assert refused.retry_after == pytest.approx(20.0, abs=0.5)  # one request refills every 20 s at 3/min
    headers = dict(rate_limit_headers(refused))
    assert headers[b"retry-after"] == b"20"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"


async def test_limits_are_per_principal() -> None:
    limiter = MemoryRateLimiter()
    assert (await limiter.check("alice", 1, None)).allowed  # type: ignore[union-attr]
    assert not (await limiter.check("alice", 1, None)).allowed  # type: ignore[union-attr]
    assert (await limiter.check("bob", 1, None)).allowed  # type: ignore[union-attr]


async def test_tokens_per_minute_are_charged_after_the_answer() -> None:
    limiter = MemoryRateLimiter()
    assert await limiter.check("alice", None, 600) is None
    await limiter.charge_tokens("alice", 600, 900)  # one long answer overdraws the bucket
    refused = await limiter.check("alice", None, 600)
    assert refused is not None and not refused.allowed and refused.kind == "tokens"
    assert refused.retry_after == pytest.approx(30.0, abs=0.5)  # 300 tokens in debt at 10 tokens/s


async def test_no_limits_means_no_decision() -> None:
    assert await MemoryRateLimiter().check("alice", None, None) is None
