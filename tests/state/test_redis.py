"""Shared state in a real redis-server that the suite starts itself (and kills for fault tests)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from ollama_asgi.admission import Admission
from ollama_asgi.ratelimit import MemoryRateLimiter
from ollama_asgi.slots import BackendSlots
from ollama_asgi.state.redis import RedisRateLimiter, RedisState
from tests.support.redis_server import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def _workers(
    url: str, n: int, *, parallel: int = 2, lease_ttl: float = 10.0, fail_open: bool = True, max_queue: int = 100
) -> list[Admission]:
    return [
        Admission(
            parallel=parallel,
            embed_parallel=None,
            max_queue=max_queue,
            shared=RedisState(url, prefix="t", lease_ttl=lease_ttl),
            fail_open=fail_open,
        )
        for _ in range(n)
    ]


async def _close(workers: list[Admission]) -> None:
    for worker in workers:
        await worker.shared.aclose()  # type: ignore[union-attr]


async def test_workers_sharing_redis_never_exceed_the_backend_slots(redis_server: RedisServer) -> None:
    workers = _workers(redis_server.url, 3)
    active = peak = done = 0

    async def job(admission: Admission, b0: BackendSlots) -> None:
        nonlocal active, peak, done
        lease = await admission.admit(b0, kind="generate", principal="u", wait_limit=20)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        lease.release()
        done += 1

    slots = [worker.slots_for("b0") for worker in workers]
    await asyncio.gather(*(job(workers[i % 3], slots[i % 3]) for i in range(60)))
    assert done == 60
    assert peak == 2
    await _close(workers)


async def test_slots_of_a_crashed_worker_come_back_by_lease_expiry(redis_server: RedisServer) -> None:
    crashed, survivor = _workers(redis_server.url, 2, parallel=1, lease_ttl=1.0)
    crashed_b0 = crashed.slots_for("b0")
    survivor_b0 = survivor.slots_for("b0")
    await crashed.admit(crashed_b0, kind="generate", principal="u", wait_limit=1)
    for task in crashed.shared._tasks:  # type: ignore[union-attr]
        task.cancel()  # the worker dies: no heartbeat, no release
    loop = asyncio.get_running_loop()
    started = loop.time()
    lease = await survivor.admit(survivor_b0, kind="generate", principal="u", wait_limit=5)
    waited = loop.time() - started
    assert 0.5 < waited < 3.0
    lease.release()
    await survivor.shared.aclose()  # type: ignore[union-attr]


async def test_held_leases_are_renewed_beyond_their_ttl(redis_server: RedisServer) -> None:
    holder, other = _workers(redis_server.url, 2, parallel=1, lease_ttl=1.0)
    holder_b0 = holder.slots_for("b0")
    other_b0 = other.slots_for("b0")
    lease = await holder.admit(holder_b0, kind="generate", principal="u", wait_limit=1)
    await asyncio.sleep(2.0)  # twice the lease time; the heartbeat keeps it
    with pytest.raises(Exception, match="no slot became free"):
        await other.admit(other_b0, kind="generate", principal="u", wait_limit=0.3)
    lease.release()
    (await other.admit(other_b0, kind="generate", principal="u", wait_limit=2)).release()
    await _close([holder, other])


async def test_queue_bound_holds_across_workers(redis_server: RedisServer) -> None:
    a, b = (
        Admission(parallel=1, embed_parallel=None, max_queue=2, shared=RedisState(redis_server.url, prefix="q"))
        for _ in range(2)
    )
    a_b0 = a.slots_for("b0")
    b_b0 = b.slots_for("b0")
    held = await a.admit(a_b0, kind="generate", principal="u", wait_limit=1)
    waiting = [
        asyncio.ensure_future(a.admit(a_b0, kind="generate", principal="u", wait_limit=5)),
        asyncio.ensure_future(b.admit(b_b0, kind="generate", principal="u", wait_limit=5)),
    ]
    await asyncio.sleep(0.2)
    with pytest.raises(Exception, match="queue for this backend is full"):
        await b.admit(b_b0, kind="generate", principal="u", wait_limit=5)
    held.release()
    for next_done in asyncio.as_completed(waiting):  # each releases its slot so the other can go
        (await next_done).release()
    await _close([a, b])


async def test_redis_going_away_fails_open_and_recovers(redis_server: RedisServer) -> None:
    (worker,) = _workers(redis_server.url, 1, parallel=1)
    worker_b0 = worker.slots_for("b0")
    (await worker.admit(worker_b0, kind="generate", principal="u", wait_limit=1)).release()
    redis_server.kill()
    lease = await worker.admit(worker_b0, kind="generate", principal="u", wait_limit=2)  # served on local limits
    assert not worker.shared.healthy  # type: ignore[union-attr]
    lease.release()
    redis_server.start()
    for _ in range(100):
        if worker.shared.healthy:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.05)
    assert worker.shared.healthy  # type: ignore[union-attr]
    (await worker.admit(worker_b0, kind="generate", principal="u", wait_limit=2)).release()
    await _close([worker])


async def test_redis_going_away_fails_closed_when_asked(redis_server: RedisServer) -> None:
    (worker,) = _workers(redis_server.url, 1, parallel=1, fail_open=False)
    worker_b0 = worker.slots_for("b0")
    redis_server.kill()
    with pytest.raises(Exception, match="shared state is unavailable") as info:
        await worker.admit(worker_b0, kind="generate", principal="u", wait_limit=2)
    assert info.value.status == 503  # type: ignore[attr-defined]
    await _close([worker])


async def test_rate_limits_are_shared_by_workers(redis_server: RedisServer) -> None:
    limiters = [RedisRateLimiter(RedisState(redis_server.url, prefix="rl"), MemoryRateLimiter()) for _ in range(2)]
    decisions = [await limiters[i % 2].check("alice", 3, None) for i in range(4)]
    assert [d.allowed for d in decisions if d] == [True, True, True, False]
    assert decisions[-1].retry_after == pytest.approx(20, abs=1)  # type: ignore[union-attr]
    await limiters[0].charge_tokens("bob", 60, 100)
    refused = await limiters[1].check("bob", None, 60)
    assert refused is not None and not refused.allowed and refused.kind == "tokens"
    for limiter in limiters:
        await limiter.state.aclose()


async def test_a_healthy_redis_under_512_concurrent_requests_is_never_taken_for_unavailable(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # More requests at once than either worker has connections: they wait for one, as for a slot.
    workers = _workers(redis_server.url, 2, parallel=4, max_queue=1024)
    active = peak = 0

    async def job(admission: Admission, b0: BackendSlots) -> None:
        nonlocal active, peak
        lease = await admission.admit(b0, kind="generate", principal="u", wait_limit=60, model="m")
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        active -= 1
        lease.release()

    with caplog.at_level(logging.WARNING, logger="ollama_asgi.state"):
        slots = [worker.slots_for("b0") for worker in workers]
        await asyncio.gather(*(job(workers[i % 2], slots[i % 2]) for i in range(512)))
    assert [r.getMessage() for r in caplog.records] == []
    assert all(worker.shared.healthy for worker in workers)  # type: ignore[union-attr]
    assert peak <= 4  # the shared limit held throughout: no worker fell back to its local one
    await _close(workers)


async def test_a_request_that_finds_a_slot_costs_the_store_one_script_in_and_one_out(redis_server: RedisServer) -> None:
    (worker,) = _workers(redis_server.url, 1, parallel=2)
    worker_b0 = worker.slots_for("b0")
    (await worker.admit(worker_b0, kind="generate", principal="u", wait_limit=1)).release()  # scripts loaded
    await worker.aclose()
    before = _calls(redis_server.url)
    for _ in range(10):
        (await worker.admit(worker_b0, kind="generate", principal="u", wait_limit=1)).release()
        await worker.aclose()  # the release, sent in the background, has reached the store
    after = _calls(redis_server.url)
    assert after.get("evalsha", 0) - before.get("evalsha", 0) == 20
    assert after.get("publish", 0) == 0  # nobody waited: no worker was woken
    await _close([worker])


def _calls(url: str) -> dict[str, int]:
    """Calls per command so far (commands that scripts run count too)."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(url)
    try:
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in client.info("commandstats").items()}
    finally:
        client.close()
