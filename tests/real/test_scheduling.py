"""Swap-aware scheduling against the real scheduler: loads counted in the server's log.

Each server is the test's own, started with ``OLLAMA_MAX_LOADED_MODELS=1``, with one-thread copies
of the fixture models (see ``test_lifecycle``), so its log counts only this test's loads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from ollama_asgi.testing.real import RealOllama
from tests.conftest import AUTH
from tests.real.test_lifecycle import _chat, _client, _serve
from tests.support.server import ServerThread

Start = Callable[..., RealOllama]
Gateway = Callable[..., ServerThread]

_ALTERNATING = [("tiny-1t", "tools-1t")[i % 2] for i in range(40)]


async def _burst(base: str, headers: dict[str, str]) -> list[httpx.Response]:
    """The 40 alternating requests, queued at once, each with a request id of its own."""
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as client:
        return await asyncio.gather(
            *(
                client.post("/api/chat", json=_chat(model), headers={"x-request-id": f"burst-{i}"})
                for i, model in enumerate(_ALTERNATING)
            )
        )


async def test_an_alternating_burst_grouped_by_model_is_all_served_with_one_load_per_model(
    own_ollama: Start, gateway_for: Gateway
) -> None:
    server = _serve(own_ollama, "tiny", "tools", OLLAMA_MAX_LOADED_MODELS="1")
    gateway = gateway_for(server, parallel=1, max_loaded_models=1, queue_timeout=300)
    answers = await _burst(gateway.url + "/llm", AUTH)
    assert [a.status_code for a in answers] == [200] * 40, [a.text for a in answers if a.status_code != 200]
    assert server.loads() <= 2
    queued = [a for a in answers if "x-queue-wait" in a.headers]
    assert queued, "a burst on one slot queues"
    assert all(int(a.headers["x-queue-position"]) >= 0 and float(a.headers["x-queue-wait"]) > 0 for a in queued)


async def test_grouping_loads_at_most_half_as_often_as_serving_in_arrival_order(
    own_ollama: Start, gateway_for: Gateway
) -> None:
    loads = {}
    for name, settings in (
        ("arrival", {"lifecycle": False}),  # a plain FIFO proxy: each request reaches Ollama in turn
        ("fifo", {"max_loaded_models": 1, "swap_grouping": False}),
        ("grouped", {"max_loaded_models": 1}),
    ):
        server = _serve(own_ollama, "tiny", "tools", OLLAMA_MAX_LOADED_MODELS="1")
        gateway = gateway_for(server, parallel=1, queue_timeout=300, **settings)
        answers = await _burst(gateway.url + "/llm", AUTH)
        assert [a.status_code for a in answers] == [200] * 40, (name, [a.text for a in answers if a.status_code != 200])
        loads[name] = server.loads()
        server.stop()
    assert loads["grouped"] <= loads["arrival"] / 2, loads
    assert loads["grouped"] <= loads["fifo"], loads


async def test_a_waiting_request_learns_its_place_while_another_models_group_runs(
    own_ollama: Start, gateway_for: Gateway
) -> None:
    server = _serve(own_ollama, "tiny", "tools", OLLAMA_MAX_LOADED_MODELS="1")
    gateway = gateway_for(server, parallel=1, max_loaded_models=1, queue_timeout=300, swap_max_delay=300)
    async with _client(gateway) as client:
        first = asyncio.ensure_future(
            asyncio.gather(*(client.post("/api/chat", json=_chat("tiny-1t")) for _ in range(6)))
        )
        await asyncio.sleep(0.2)
        other = asyncio.ensure_future(
            client.post("/api/chat", json=_chat("tools-1t"), headers={"x-request-id": "the-other-model"})
        )
        told = None
        for _ in range(100):  # until it is queued, or answered
            answer = await client.get("/_gateway/queue/the-other-model")
            if answer.status_code == 200 or other.done():
                told = answer.json() if answer.status_code == 200 else None
                break
            await asyncio.sleep(0.01)
        await first
        answered = await other
    assert answered.status_code == 200
    assert told is not None and told["state"] in ("waiting_for_model", "waiting_for_slot"), told
    assert told["position"] >= 1 and told["expected_wait"] > 0


async def test_a_group_that_keeps_its_model_busy_yields_once_a_waiter_is_overdue(
    own_ollama: Start, gateway_for: Gateway
) -> None:
    # Three clients keep tiny busy back to back; tools comes in between. Its turn comes while they
    # still run: they stop only when its answer is in, or after 200 requests each.
    server = _serve(own_ollama, "tiny", "tools", OLLAMA_MAX_LOADED_MODELS="1")
    gateway = gateway_for(server, parallel=1, max_loaded_models=1, queue_timeout=300, swap_max_delay=0.5)
    stop = asyncio.Event()
    warmed = asyncio.Event()  # tiny has answered a few: its group runs
    served = [0, 0, 0]
    async with _client(gateway) as client:

        async def busy(n: int) -> None:
            while not stop.is_set() and served[n] < 200:
                assert (await client.post("/api/chat", json=_chat("tiny-1t"))).status_code == 200
                served[n] += 1
                if sum(served) >= 6:
                    warmed.set()

        async def other() -> httpx.Response:
            await warmed.wait()
            answer = await client.post("/api/chat", json=_chat("tools-1t"))
            stop.set()
            return answer

        results = await asyncio.gather(busy(0), busy(1), busy(2), other())
    answer = results[-1]
    assert isinstance(answer, httpx.Response) and answer.status_code == 200
    assert max(served) < 200, served  # answered while the others still asked
