"""Model lifecycle against the real scheduler: loads counted in the server's log, its own 503s, cancellation.

Each server here is the test's own (``own_ollama``), so its log counts only the test's loads and
its settings (``OLLAMA_NUM_PARALLEL``, ``OLLAMA_MAX_QUEUE``, ``OLLAMA_MAX_LOADED_MODELS``) are the
ones the test names. Its models are the suite's, each run on one thread (``PARAMETER num_thread
1``): on a busy two-core machine a runner's two threads wait on each other for seconds per answer,
while one thread answers ``tiny`` in a few milliseconds, so timings here measure the scheduler.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from ollama_asgi.testing.real import RealOllama
from tests.conftest import ADMIN, AUTH
from tests.support.server import ServerThread

Start = Callable[..., RealOllama]
Gateway = Callable[..., ServerThread]

# One line per request the server finished, written when its handler returns.
_GENERATE_DONE = re.compile(r'\[GIN\] .*\| +(\d+) \|.*POST +"/api/generate"')


def _serve(own_ollama: Start, *names: str, **env: str) -> RealOllama:
    """A server of the test's own with ``NAME-1t``, a one-thread copy of each fixture named."""
    server = own_ollama(names, **env)
    for name in names:
        made = server.request(
            "POST",
            "/api/create",
            {"model": f"{name}-1t", "from": name, "parameters": {"num_thread": 1}, "stream": False},
        )
        assert made[0] == 200, made
    return server


def _chat(model: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "stream": False, **extra}


def _client(gateway: ServerThread, headers: dict[str, str] = AUTH) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url + "/llm", headers=headers, timeout=60)


def _expires_in(server: RealOllama, model: str) -> float:
    """Seconds until ``model`` leaves the server's memory, from its ``/api/ps`` entry."""
    _, body = server.request("GET", "/api/ps")
    assert isinstance(body, dict)
    entry = next(m for m in body["models"] if m["name"] == model)
    return datetime.fromisoformat(entry["expires_at"]).timestamp() - time.time()


async def test_a_cold_burst_of_20_makes_exactly_one_load(own_ollama: Start, gateway_for: Gateway) -> None:
    server = _serve(own_ollama, "tiny")
    gateway = gateway_for(server)
    async with _client(gateway) as client:
        answers = await asyncio.gather(*(client.post("/api/chat", json=_chat("tiny-1t")) for _ in range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    assert server.loads() == 1


# Small context buckets, so prompts of a few hundred words span three of them and evaluate quickly.
_SMALL_CONTEXTS = {"num_ctx_buckets": (256, 512, 1024), "num_predict_reserve": 64}


async def _chat_lengths(gateway: ServerThread, lengths: list[int]) -> None:
    async with _client(gateway) as client:
        for words in lengths:
            answer = await client.post("/api/chat", json=_chat("tiny-1t", " ".join(["word"] * words)))
            assert answer.status_code == 200, answer.text


async def test_prompts_of_varied_length_never_reload_the_model(own_ollama: Start, gateway_for: Gateway) -> None:
    server = _serve(own_ollama, "tiny")
    # From one word to 600 (the 256, 512 and 1024 buckets), the longest first, as a day's traffic may start.
    await _chat_lengths(gateway_for(server, **_SMALL_CONTEXTS), [600, 3, 150, 40, 300, 10, 450, 1, 80, 250])
    assert server.loads() == 1


async def test_a_longer_prompt_grows_the_context_once_and_it_never_shrinks_back(
    own_ollama: Start, gateway_for: Gateway
) -> None:
    server = _serve(own_ollama, "tiny")
    await _chat_lengths(gateway_for(server, **_SMALL_CONTEXTS), [3, 600, 3, 150, 40, 300, 10, 450, 1, 80])
    assert server.loads() == 2  # 256 for the first, 1024 from the second on


async def test_the_servers_full_queue_reaches_clients_as_a_503_with_retry_after(
    own_ollama: Start, gateway_for: Gateway
) -> None:
    server = _serve(own_ollama, "tiny", "loop", "tools", "tools2", OLLAMA_NUM_PARALLEL="1", OLLAMA_MAX_QUEUE="2")
    # Eight workers that share no state, each one's slot matching the server's: together they send
    # the server more loads and reloads than its queue holds.
    gateways = [gateway_for(server) for _ in range(8)]
    models = ("tiny-1t", "loop-1t", "tools-1t", "tools2-1t")
    clients = [_client(g) for g in gateways]
    try:
        answers = await asyncio.gather(
            *(
                c.post("/api/chat", json=_chat(models[i % 4], options={"num_ctx": 2048 + 256 * i, "num_predict": 2}))
                for i, c in enumerate(clients)
                for _ in range(2)
            )
        )
    finally:
        for c in clients:
            await c.aclose()
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503}, [(a.status_code, a.text) for a in answers]
    assert 503 in statuses  # the storm happened
    for answer in answers:
        if answer.status_code == 503:
            assert int(answer.headers.get("retry-after", "0")) >= 1, (answer.headers, answer.text)


async def test_relayed_untouched_the_servers_full_queue_also_gets_a_retry_after(
    own_ollama: Start, gateway_for: Gateway
) -> None:
    server = _serve(own_ollama, "tiny", OLLAMA_NUM_PARALLEL="1", OLLAMA_MAX_QUEUE="2")
    # Lifecycle off: the clients' own contexts reach the server, each a reload it must queue.
    gateway = gateway_for(server, lifecycle=False, parallel=10)
    async with _client(gateway) as client:
        answers = await asyncio.gather(
            *(client.post("/api/chat", json=_chat("tiny-1t", options={"num_ctx": 2048 + 256 * i})) for i in range(10))
        )
    refused = [a for a in answers if a.status_code != 200]
    assert refused and {a.status_code for a in refused} == {503}
    assert all(int(a.headers["retry-after"]) >= 1 for a in refused)


async def test_a_client_that_leaves_a_stream_stops_the_generation(own_ollama: Start, gateway_for: Gateway) -> None:
    server = _serve(own_ollama, "loop", OLLAMA_NUM_PARALLEL="1")
    gateway = gateway_for(server)
    body = {"model": "loop-1t", "prompt": "count", "options": {"num_predict": 100_000}}
    async with _client(gateway) as client:
        async with client.stream("POST", "/api/generate", json=body) as stream:
            lines = stream.aiter_lines()
            for _ in range(10):
                await anext(lines)
            finished_before = len(_GENERATE_DONE.findall(server.log()))
        left = time.monotonic()
        while len(_GENERATE_DONE.findall(server.log())) == finished_before:
            assert time.monotonic() - left < 2.0, "the server still generates for a client that left"
            await asyncio.sleep(0.005)
        stopped_after = time.monotonic() - left
        # The one runner slot is free again: the next request starts at once.
        started = time.monotonic()
        answer = await client.post("/api/generate", json={**body, "stream": False, "options": {"num_predict": 3}})
        next_took = time.monotonic() - started
    assert answer.status_code == 200 and answer.json()["eval_count"] == 3
    assert stopped_after < 0.5, stopped_after
    assert next_took < 1.0, next_took


@pytest.mark.parametrize("told", [1, None], ids=["gateway-told-the-limit", "gateway-not-told"])
async def test_with_one_model_loaded_at_a_time_an_alternating_burst_is_all_served(
    own_ollama: Start, gateway_for: Gateway, told: int | None
) -> None:
    server = _serve(own_ollama, "tiny", "tools", OLLAMA_MAX_LOADED_MODELS="1")
    gateway = gateway_for(server, max_loaded_models=told)
    async with _client(gateway) as client:
        answers = await asyncio.gather(
            *(client.post("/api/chat", json=_chat(("tiny-1t", "tools-1t")[i % 2])) for i in range(10))
        )
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers if a.status_code != 200]


async def test_requests_carry_the_gateways_keep_alive(own_ollama: Start, gateway_for: Gateway) -> None:
    server = _serve(own_ollama, "tiny")
    gateway = gateway_for(server, keep_alive="7m")
    async with _client(gateway) as client:
        answer = await client.post("/api/chat", json=_chat("tiny-1t", keep_alive=-1))  # a pin, not the caller's to make
    assert answer.status_code == 200
    assert 7 * 60 - 30 < _expires_in(server, "tiny-1t:latest") <= 7 * 60


async def test_an_administrator_may_pin_a_model(own_ollama: Start, gateway_for: Gateway) -> None:
    server = _serve(own_ollama, "tiny")
    gateway = gateway_for(server, keep_alive="7m")
    async with _client(gateway, ADMIN) as client:
        answer = await client.post("/api/chat", json=_chat("tiny-1t", keep_alive=-1))
    assert answer.status_code == 200
    assert _expires_in(server, "tiny-1t:latest") > 100 * 365 * 86400


async def test_an_administrators_keep_alive_0_unloads_the_model(own_ollama: Start, gateway_for: Gateway) -> None:
    server = _serve(own_ollama, "tiny")
    gateway = gateway_for(server)
    async with _client(gateway, ADMIN) as client:
        assert (await client.post("/api/chat", json=_chat("tiny-1t"))).status_code == 200
        answer = await client.post("/api/generate", json={"model": "tiny-1t", "keep_alive": 0})
    assert answer.status_code == 200
    assert answer.json()["done_reason"] == "unload"
    deadline = time.monotonic() + 5
    while server.loaded():
        assert time.monotonic() < deadline, server.loaded()
        await asyncio.sleep(0.05)


async def test_a_caller_who_is_not_an_administrator_cannot_unload(own_ollama: Start, gateway_for: Gateway) -> None:
    server = _serve(own_ollama, "tiny")
    gateway = gateway_for(server)
    async with _client(gateway) as client:
        assert (await client.post("/api/chat", json=_chat("tiny-1t"))).status_code == 200
        refused = await client.post("/api/generate", json={"model": "tiny-1t", "keep_alive": 0})
        answered = await client.post("/api/chat", json=_chat("tiny-1t", keep_alive=0))
    assert refused.status_code == 403
    assert answered.status_code == 200
    assert server.loaded() == ["tiny-1t:latest"]
    assert _expires_in(server, "tiny-1t:latest") > 25 * 60  # the gateway's 30m, not the caller's 0
