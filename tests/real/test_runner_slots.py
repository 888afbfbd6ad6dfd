"""Slots per model runner against the real scheduler: ``OLLAMA_NUM_PARALLEL`` is per loaded model.

Each server is the test's own, with ``tiny`` and ``loop`` loaded side by side. A long ``loop``
answer streams while a short ``tiny`` one is asked: Ollama answers ``tiny`` from its own runner
without waiting, and the gateway, whose slots are per model, must do the same; with
``backend_parallel`` capping the backend at what ``loop`` holds, ``tiny`` waits for it instead.
What is compared is the order of events (first lines, ends), never a duration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ollama_asgi.testing.real import RealOllama
from tests.conftest import AUTH
from tests.support.server import ServerThread

Start = Callable[..., RealOllama]
Gateway = Callable[..., ServerThread]


def _chat(model: str, **options: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "go"}], "stream": True, "options": options}


@dataclass
class _Seen:
    loops_overlap: bool  # every loop stream had its first line before any of them ended
    tiny_beside_loop: bool  # tiny's whole answer came while the loop streams still ran


async def _tiny_while_loop_streams(base: str, headers: dict[str, str], streams: int) -> _Seen:
    """``streams`` long loop answers at once, then a tiny one as soon as all have begun."""
    clock = asyncio.get_running_loop().time
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as client:
        for model in ("loop", "tiny"):  # both loaded, as the gateway loads them, before anything is compared
            warm = await client.post("/api/chat", json={**_chat(model, num_predict=4), "stream": False})
            assert warm.status_code == 200, warm.text
        began = [asyncio.Event() for _ in range(streams)]
        firsts: list[float] = []

        async def loop_stream(started: asyncio.Event) -> float:
            async with client.stream("POST", "/api/chat", json=_chat("loop", num_predict=1500)) as answer:
                assert answer.status_code == 200
                async for line in answer.aiter_lines():
                    if line and not started.is_set():
                        firsts.append(clock())
                        started.set()
            return clock()

        loops = [asyncio.ensure_future(loop_stream(event)) for event in began]
        try:
            async with asyncio.timeout(300):  # a serialised stream begins only once the one before it ends
                while not all(event.is_set() for event in began):
                    for task in loops:
                        if task.done() and task.exception() is not None:
                            raise AssertionError("a loop stream failed") from task.exception()
                    await asyncio.sleep(0.01)
            tiny = await client.post("/api/chat", json={**_chat("tiny"), "stream": False})
            tiny_done = clock()
            assert tiny.status_code == 200, tiny.text
            ends = await asyncio.gather(*loops)
        finally:
            for task in loops:
                task.cancel()
    return _Seen(loops_overlap=max(firsts) < min(ends), tiny_beside_loop=tiny_done < min(ends))


@pytest.mark.parametrize("num_parallel", [1, 2])
async def test_two_loaded_models_run_side_by_side_through_the_gateway_as_directly(
    own_ollama: Start, gateway_for: Gateway, num_parallel: int
) -> None:
    server = own_ollama(("tiny", "loop"), OLLAMA_NUM_PARALLEL=str(num_parallel))
    direct = await _tiny_while_loop_streams(server.url, {}, num_parallel)
    gateway = gateway_for(server, parallel=num_parallel, queue_timeout=300)
    through = await _tiny_while_loop_streams(gateway.url + "/llm", AUTH, num_parallel)
    assert direct == _Seen(loops_overlap=True, tiny_beside_loop=True)
    assert through == direct


@pytest.mark.parametrize("num_parallel", [1, 2])
async def test_the_backend_cap_makes_the_other_model_wait(
    own_ollama: Start, gateway_for: Gateway, num_parallel: int
) -> None:
    server = own_ollama(("tiny", "loop"), OLLAMA_NUM_PARALLEL=str(num_parallel))
    gateway = gateway_for(server, parallel=num_parallel, backend_parallel=num_parallel, queue_timeout=300)
    seen = await _tiny_while_loop_streams(gateway.url + "/llm", AUTH, num_parallel)
    assert seen == _Seen(loops_overlap=True, tiny_beside_loop=False)
