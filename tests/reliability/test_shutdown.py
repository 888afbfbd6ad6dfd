"""Graceful shutdown: SIGTERM to ``ollama-asgi serve`` while streams run and requests queue.

The listener closes at once; requests queued for a slot are answered 503 with Retry-After at once
(so the client retries on another replica instead of waiting for a server that is leaving); the
streams in flight run to their final chunk, up to ``drain_timeout``, after which they end with a
terminal error line; the Redis leases and queue places of this worker are gone when it exits.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from ollama_asgi.testing import EmulatorServer
from tests.conftest import ADMIN, ADMIN_KEY, API_KEY, AUTH
from tests.reliability.helpers import (
    MeasuredGateway,
    assert_idle,
    expected_text,
    gateway_of,
    queued_at,
    read_ndjson,
    read_sse,
    redis_leftovers,
    until,
)
from tests.support.redis_server import RedisServer
from tests.support.server import ServerThread


@pytest.fixture
def start_gateway(emulator: EmulatorServer, redis_server: RedisServer) -> Iterator[Callable[..., MeasuredGateway]]:
    started: list[MeasuredGateway] = []

    def start(prefix: str, **env: str) -> MeasuredGateway:
        gateway = MeasuredGateway(
            {
                "OLLAMA_ASGI_UPSTREAMS": emulator.url,
                "OLLAMA_ASGI_REDIS_URL": redis_server.url,
                "OLLAMA_ASGI_REDIS_PREFIX": prefix,
                "OLLAMA_ASGI_PARALLEL": "2",
                "OLLAMA_ASGI_MAX_QUEUE": "10",
                "OLLAMA_ASGI_API_KEYS": f"ci={API_KEY}",
                "OLLAMA_ASGI_ADMIN_API_KEYS": f"ops={ADMIN_KEY}",
                **env,
            }
        )
        started.append(gateway)
        gateway.wait_ready()
        return gateway

    yield start
    for gateway in started:
        if gateway.process.poll() is None:
            gateway.stop()


def _chat(prompt: str, tokens: int, stream: bool = True) -> dict[str, object]:
    messages = [{"role": "user", "content": prompt}]
    return {"model": "llama3.2", "messages": messages, "stream": stream, "options": {"num_predict": tokens}}


async def _queues(client: httpx.AsyncClient, url: str) -> tuple[int, int]:
    status = (await client.get(url + "/_gateway/status", headers=ADMIN)).json()
    return sum(q["in_flight"] for q in status["queues"]), sum(q["waiting"] for q in status["queues"])


async def _wait_queues(client: httpx.AsyncClient, url: str, in_flight: int, waiting: int) -> None:
    for _ in range(500):
        if await _queues(client, url) == (in_flight, waiting):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {in_flight} in flight and {waiting} waiting, got {await _queues(client, url)}")


def _connect_refused(url: str) -> bool:
    try:
        httpx.get(url + "/_gateway/health", timeout=2)
    except httpx.ConnectError:
        return True
    return False


async def test_sigterm_finishes_streams_refuses_the_queue_and_releases_redis_leases(
    emulator: EmulatorServer, start_gateway: Callable[..., MeasuredGateway], redis_server: RedisServer
) -> None:
    emulator.emulator.parallel = 4
    emulator.emulator.token_interval = 0.03  # 80 tokens: 2.4 s
    gateway = start_gateway("drain", OLLAMA_ASGI_DRAIN_TIMEOUT="20s")
    url = gateway.url
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as client:
        assert (await client.post(url + "/api/chat", json=_chat("warm up", 1, stream=False))).status_code == 200
        native = asyncio.ensure_future(read_ndjson(client, url + "/api/chat", _chat("drain native", 80)))
        body = {
            "model": "llama3.2",
            "stream": True,
            "max_tokens": 80,
            "messages": [{"role": "user", "content": "drain sse"}],
        }
        openai = asyncio.ensure_future(read_sse(client, url + "/v1/chat/completions", body))
        await _wait_queues(client, url, 2, 0)
        queued = [asyncio.ensure_future(client.post(url + "/api/chat", json=_chat(f"q{i}", 4))) for i in range(3)]
        await _wait_queues(client, url, 2, 3)
        assert redis_leftovers(redis_server.url, "drain") == {
            "drain:slots:backend-0/llama3.2%3Alatest/generate": 2,  # the model runner's slots
            "drain:queue:backend-0": 3,
        }

        signalled = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        refused = await asyncio.gather(*queued)
        refused_after = time.monotonic() - signalled
        await asyncio.sleep(0.3)
        assert _connect_refused(url)  # the listener is closed while the streams still run
        native_answer, openai_answer = await asyncio.gather(native, openai)
        streams_after = time.monotonic() - signalled

    for response in refused:
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert "shutting down" in response.json()["error"]
    assert refused_after < 1.5 and refused_after < streams_after  # the queue was answered at once
    assert native_answer.status == 200 and native_answer.items[-1]["done"] is True
    assert native_answer.text == expected_text("drain native", 80)
    assert openai_answer.status == 200 and openai_answer.items[-1] == "[DONE]"
    assert openai_answer.text == expected_text("drain sse", 80)
    assert gateway.process.wait(10) in (0, -signal.SIGTERM)
    assert redis_leftovers(redis_server.url, "drain") == {}


async def test_streams_longer_than_the_drain_timeout_end_with_an_error_line(
    emulator: EmulatorServer, start_gateway: Callable[..., MeasuredGateway], redis_server: RedisServer
) -> None:
    emulator.emulator.parallel = 4
    emulator.emulator.token_interval = 0.05  # 200 tokens: 10 s, far past the drain timeout
    gateway = start_gateway("cut", OLLAMA_ASGI_DRAIN_TIMEOUT="1s")
    url = gateway.url
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as client:
        native = asyncio.ensure_future(read_ndjson(client, url + "/api/chat", _chat("long native", 200)))
        body = {
            "model": "llama3.2",
            "stream": True,
            "max_tokens": 200,
            "messages": [{"role": "user", "content": "long sse"}],
        }
        openai = asyncio.ensure_future(read_sse(client, url + "/v1/chat/completions", body))
        await _wait_queues(client, url, 2, 0)
        await asyncio.sleep(0.3)
        signalled = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        native_answer, openai_answer = await asyncio.gather(native, openai)
        ended_after = time.monotonic() - signalled
    assert 0.9 < ended_after < 4.0
    # Well-formed to the end: whole lines or events, then one terminal error, no final chunk.
    assert native_answer.status == 200 and native_answer.error is not None and native_answer.text
    assert not any(item.get("done") for item in native_answer.items)
    assert openai_answer.status == 200 and openai_answer.error is not None and openai_answer.text
    assert "[DONE]" not in openai_answer.items
    assert gateway.process.wait(10) in (0, -signal.SIGTERM)
    assert redis_leftovers(redis_server.url, "cut") == {}


async def test_a_load_in_progress_at_shutdown_releases_its_lock(
    emulator: EmulatorServer, start_gateway: Callable[..., MeasuredGateway], redis_server: RedisServer
) -> None:
    emulator.emulator.load_base_seconds = 5.0  # the model is still loading when the signal comes
    gateway = start_gateway("load", OLLAMA_ASGI_DRAIN_TIMEOUT="1s")
    url = gateway.url
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as client:
        waiting = asyncio.ensure_future(client.post(url + "/api/chat", json=_chat("cold", 3, stream=False)))
        await until(lambda: any(r.path == "/api/generate" for r in emulator.emulator.requests), what="load")
        assert "load:backend-0:llama3.2:latest" in str(redis_leftovers(redis_server.url, "load"))
        gateway.process.send_signal(signal.SIGTERM)
        response = await waiting
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert gateway.process.wait(10) in (0, -signal.SIGTERM)
    assert redis_leftovers(redis_server.url, "load") == {}


async def test_begin_shutdown_refuses_new_and_queued_work_and_lets_in_flight_finish(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    """The same contract in-process, for hosts that drive shutdown themselves."""
    emulator.emulator.token_interval = 0.02
    server = host_factory(parallel=1)
    gateway = gateway_of(server)
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        running = asyncio.ensure_future(read_ndjson(client, "/api/chat", _chat("in flight", 30)))
        await until(lambda: emulator.emulator.in_progress >= 1 and gateway.registry.backends[0].slots.pools != {})
        queued = asyncio.ensure_future(client.post("/api/chat", json=_chat("queued", 3)))
        await until(lambda: queued_at(gateway) == 1)
        assert server.loop is not None
        server.loop.call_soon_threadsafe(gateway.begin_shutdown)
        late = await client.post("/api/chat", json=_chat("late", 3))
        health = await client.get("/_gateway/health")
        for response in (await queued, late):
            assert response.status_code == 503 and response.headers["retry-after"]
        assert health.status_code == 503 and health.json()["status"] == "shutting_down"
        answer = await running
        assert answer.items[-1]["done"] is True and answer.text == expected_text("in flight", 30)
    await assert_idle(gateway)
