"""Three gateway processes sharing one real redis-server in front of one emulator."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from ollama_asgi.testing import EmulatorServer
from tests.conftest import API_KEY, AUTH
from tests.support.processes import GatewayProcess
from tests.support.redis_server import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def _start_workers(emulator: EmulatorServer, redis_url: str, n: int = 3, **extra: str) -> list[GatewayProcess]:
    env = {
        "OLLAMA_ASGI_UPSTREAMS": emulator.url,
        "OLLAMA_ASGI_REDIS_URL": redis_url,
        "OLLAMA_ASGI_PARALLEL": "2",
        "OLLAMA_ASGI_MAX_QUEUE": "500",
        "OLLAMA_ASGI_LEASE_TTL": "2s",
        "OLLAMA_ASGI_API_KEYS": f"ci={API_KEY}",
        **extra,
    }
    workers = [GatewayProcess(env) for _ in range(n)]
    for worker in workers:
        worker.wait_ready()
    return workers


async def _health(worker: GatewayProcess) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(worker.url + "/_gateway/health")


async def _burst(workers: list[GatewayProcess], count: int) -> list[httpx.Response]:
    body = {"model": "llama3.2", "prompt": "w", "stream": False, "options": {"num_predict": 4}}
    async with httpx.AsyncClient(headers=AUTH, timeout=60) as client:
        return await asyncio.gather(
            *(client.post(workers[i % len(workers)].url + "/api/generate", json=body) for i in range(count))
        )


async def test_three_workers_never_send_more_than_parallel_requests(
    emulator: EmulatorServer, redis_server: RedisServer
) -> None:
    emulator.emulator.parallel = 8
    emulator.emulator.token_interval = 0.01
    workers = _start_workers(emulator, redis_server.url)
    try:
        responses = await _burst(workers, 90)
    finally:
        for worker in workers:
            worker.stop()
    assert [r.status_code for r in responses] == [200] * 90
    assert emulator.emulator.stats.max_active <= 2
    assert emulator.emulator.stats.completed >= 90


async def test_workers_keep_serving_while_redis_is_down_and_recover(
    emulator: EmulatorServer, redis_server: RedisServer
) -> None:
    emulator.emulator.token_interval = 0.002
    workers = _start_workers(emulator, redis_server.url, n=2)
    try:
        assert [r.status_code for r in await _burst(workers, 10)] == [200] * 10
        redis_server.kill()
        assert [r.status_code for r in await _burst(workers, 10)] == [200] * 10  # fail-open
        health = (await _health(workers[0])).json()
        assert health["redis"] == "down"
        redis_server.start()
        for _ in range(100):
            if all([(await _health(w)).json()["redis"] == "up" for w in workers]):
                break
            await asyncio.sleep(0.1)
        assert all([(await _health(w)).json()["redis"] == "up" for w in workers])
        emulator.emulator.clear()
        emulator.emulator.parallel = 8
        emulator.emulator.token_interval = 0.01
        assert [r.status_code for r in await _burst(workers, 30)] == [200] * 30
        assert emulator.emulator.stats.max_active <= 2  # shared limits are back in force
    finally:
        for worker in workers:
            worker.stop()


async def test_fail_closed_workers_answer_503_while_redis_is_down(
    emulator: EmulatorServer, redis_server: RedisServer
) -> None:
    (worker,) = _start_workers(emulator, redis_server.url, n=1, OLLAMA_ASGI_REDIS_FAIL_OPEN="false")
    try:
        assert (await _burst([worker], 1))[0].status_code == 200
        redis_server.kill()
        response = (await _burst([worker], 1))[0]
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
        assert (await _health(worker)).status_code == 503
    finally:
        worker.stop()
