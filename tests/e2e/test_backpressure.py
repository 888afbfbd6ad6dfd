"""Admission control end to end: slots, bounded queue, deadlines, fairness, rate limits, keep-alive."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest

from ollama_asgi.testing import EmulatorServer
from tests.conftest import AUTH
from tests.support.rawhttp import request
from tests.support.server import ServerThread


def _generate(tokens: int, prompt: str = "w") -> dict[str, object]:
    return {"model": "llama3.2", "prompt": prompt, "stream": False, "options": {"num_predict": tokens}}


async def test_burst_of_200_never_exceeds_the_slots_and_loses_nothing(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.parallel = 8  # Ollama would take more; the gateway must not send them
    emulator.emulator.token_interval = 0.005
    server = host_factory(parallel=2, max_queue=20)
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=60) as client:
        await client.post("/api/generate", json=_generate(1))  # load the model first
        emulator.emulator.clear()
        responses = await asyncio.gather(*(client.post("/api/generate", json=_generate(8)) for _ in range(200)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    ok = [r for r in responses if r.status_code == 200]
    busy = [r for r in responses if r.status_code == 503]
    assert len(ok) >= 22  # two in flight plus twenty queued at least
    assert all(r.json()["eval_count"] == 8 and r.json()["done"] for r in ok)
    for r in busy:
        assert int(r.headers["retry-after"]) >= 1
        assert "queue" in r.json()["error"]
    assert emulator.emulator.stats.max_active <= 2
    assert emulator.emulator.stats.completed == len(ok)  # refused requests never reached Ollama


async def test_retrying_after_the_advertised_time_succeeds(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.02
    server = host_factory(parallel=1, max_queue=3)
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=60) as client:
        for _ in range(3):  # let the gateway measure the service time (about 0.2 s)
            assert (await client.post("/api/generate", json=_generate(10))).status_code == 200
        running = [asyncio.ensure_future(client.post("/api/generate", json=_generate(10))) for _ in range(4)]
        await asyncio.sleep(0.05)
        refused = await client.post("/api/generate", json=_generate(10))
        assert refused.status_code == 503
        wait = int(refused.headers["retry-after"])
        assert 1 <= wait <= 3
        await asyncio.sleep(wait)
        retried = await client.post("/api/generate", json=_generate(10))
        assert retried.status_code == 200
        assert [r.status_code for r in await asyncio.gather(*running)] == [200] * 4


async def test_deadline_in_the_queue_answers_503_and_never_reaches_ollama(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.05
    server = host_factory(parallel=1)
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=60) as client:
        long = asyncio.ensure_future(client.post("/api/generate", json=_generate(20)))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        late = await client.post("/api/generate", json=_generate(2, "late"), headers={"X-Request-Timeout": "0.3"})
        assert time.monotonic() - started < 2
        assert late.status_code == 503 and int(late.headers["retry-after"]) >= 1
        assert (await long).status_code == 200
    assert not [r for r in emulator.emulator.requests if r.json and r.json.get("prompt") == "late"]


async def test_bad_timeout_or_priority_headers_are_rejected(llm_url: str) -> None:
    async with httpx.AsyncClient(base_url=llm_url, headers=AUTH) as client:
        assert (
            await client.post("/api/generate", json=_generate(1), headers={"X-Request-Timeout": "soon"})
        ).status_code == 400
        assert (
            await client.post("/api/generate", json=_generate(1), headers={"X-Request-Priority": "vip"})
        ).status_code == 400


async def test_a_trickling_user_is_not_starved_by_a_flooding_one(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.01  # ~0.05 s per request
    server = host_factory(
        parallel=1,
        max_queue=500,
        api_keys=("flood=flood-key-1234", "trickle=trickle-key-1234"),
    )
    flood_headers = {"Authorization": "Bearer flood-key-1234"}
    trickle_headers = {"Authorization": "Bearer trickle-key-1234"}
    async with httpx.AsyncClient(base_url=server.url + "/llm", timeout=120) as client:
        await client.post("/api/generate", json=_generate(1), headers=flood_headers)
        flood = [
            asyncio.ensure_future(client.post("/api/generate", json=_generate(5), headers=flood_headers))
            for _ in range(60)
        ]
        await asyncio.sleep(0.3)  # the flood is queued and being served
        waits = []
        for _ in range(3):
            started = time.monotonic()
            response = await client.post("/api/generate", json=_generate(5), headers=trickle_headers)
            assert response.status_code == 200
            waits.append(time.monotonic() - started)
        await asyncio.gather(*flood)
    service = 0.05
    # Served after at most one flood request per slot: one service of waiting plus its own.
    assert max(waits) < 6 * service + 0.3, waits
    flood_total = 60 * service
    assert max(waits) < flood_total / 3


async def test_rate_limit_answers_429_with_headers(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(api_keys=({"id": "metered", "key": "metered-key-12", "requests_per_minute": 2},))
    headers = {"Authorization": "Bearer metered-key-12"}
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=headers) as client:
        statuses = [(await client.post("/api/generate", json=_generate(1))).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = await client.post("/api/generate", json=_generate(1))
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 25  # 2 per minute: one every 30 s
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert "rate limit" in refused.json()["error"]


async def test_token_budget_is_charged_from_ollamas_counts(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(api_keys=({"id": "tokens", "key": "tokens-key-12", "tokens_per_minute": 30},))
    headers = {"Authorization": "Bearer tokens-key-12"}
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=headers) as client:
        first = await client.post("/api/generate", json=_generate(40))
        assert first.status_code == 200
        second = await client.post("/api/generate", json=_generate(1))
    assert second.status_code == 429
    assert second.headers["x-ratelimit-limit-tokens"] == "30"


def test_waiting_openai_streams_get_sse_keepalive_comments(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.05
    server = host_factory(parallel=1, sse_keepalive=0.1)
    streaming = {"model": "llama3.2", "prompt": "b", "options": {"num_predict": 20}}
    blocker = request(server.url + "/llm/api/generate", body=json.dumps(streaming).encode(), headers=AUTH)
    time.sleep(0.1)
    body = json.dumps({"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "k"}]}).encode()
    response = request(server.url + "/llm/v1/chat/completions", body=body, headers=AUTH)
    assert response.status == 200
    chunks = response.chunks()
    assert chunks[0].startswith(b": ")  # a comment while queued
    events = [e for c in chunks for e in c.split(b"\n\n") if e]
    assert events[0].startswith(b": ") and events[-1] == b"data: [DONE]"
    assert any(e.startswith(b"data: {") for e in events)
    blocker.chunks()


def test_native_streams_never_get_keepalive_comments(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.05
    server = host_factory(parallel=1, sse_keepalive=0.1)
    streaming = {"model": "llama3.2", "prompt": "b", "options": {"num_predict": 10}}
    blocker = request(server.url + "/llm/api/generate", body=json.dumps(streaming).encode(), headers=AUTH)
    time.sleep(0.1)
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "k"}]}).encode()
    chunks = request(server.url + "/llm/api/chat", body=body, headers=AUTH).chunks()
    for chunk in chunks:
        for line in chunk.splitlines():
            assert json.loads(line)["model"] == "llama3.2"
    blocker.chunks()


@pytest.mark.parametrize("kind", ["generate", "embed"])
async def test_slots_return_to_zero_when_idle(host_factory: Callable[..., ServerThread], kind: str) -> None:
    from ollama_asgi import OllamaGateway

    server = host_factory(parallel=2)
    gateway = next(r.app for r in server.app.routes if isinstance(getattr(r, "app", None), OllamaGateway))  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        if kind == "generate":
            await asyncio.gather(*(client.post("/api/generate", json=_generate(3)) for _ in range(10)))
        else:
            await asyncio.gather(
                *(client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"}) for _ in range(10))
            )
    pools = [pool for backend in gateway.registry.backends for pool in backend.slots.pools.values()]
    assert all(pool.in_flight == 0 and pool.waiting == 0 for pool in pools)
