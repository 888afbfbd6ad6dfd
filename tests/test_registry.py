"""Backends added and removed at run time: a removed one leaves nothing behind, names never collide."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable, Iterator

import httpx
import pytest

from ollama_asgi import OllamaGateway, Settings
from ollama_asgi.catalog import Loaded
from ollama_asgi.testing import EmulatorServer
from tests.conftest import ADMIN, AUTH
from tests.support.rawhttp import wait_until
from tests.support.server import ServerThread

MODELS = ["llama3.2", "qwen2.5:0.5b", "qwen3:0.6b", "llava:7b"]


@pytest.fixture
def two() -> Iterator[list[EmulatorServer]]:
    servers = [EmulatorServer().start() for _ in range(2)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def _gateway(server: ServerThread) -> OllamaGateway:
    return next(r.app for r in server.app.routes if isinstance(getattr(r, "app", None), OllamaGateway))  # type: ignore[attr-defined]


def _chat(llm: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    return httpx.post(llm + "/api/chat", json=body, headers=AUTH, timeout=30)


def test_a_removed_backend_is_forgotten_by_every_part_and_its_client_closed(
    two: list[EmulatorServer], host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(
        upstreams=(
            {"url": two[0].url, "name": "a"},
            {"url": two[1].url, "name": "b", "parallel": 2, "vram_budget": 10**10},
        ),
        ps_interval=0.1,
        backend_parallel=4,
    )
    gateway = _gateway(server)
    backends = gateway.placement.backends
    model = next(m for m in MODELS if gateway.placement.ranking(m, backends)[0].name == "b")
    assert _chat(server.url + "/llm", model).status_code == 200
    removed = gateway.registry.by_name("b")
    assert removed is not None and not removed.upstream.closed
    answer = httpx.delete(server.url + "/llm/_gateway/backends/b", headers=ADMIN)
    assert answer.status_code == 200 and [b["name"] for b in answer.json()["backends"]] == ["a"]
    wait_until(lambda: removed.upstream.closed, timeout=5)
    lifecycle = gateway.lifecycle
    assert lifecycle is not None
    assert "b" not in lifecycle.models and removed not in lifecycle.backends
    status = httpx.get(server.url + "/llm/_gateway/status", headers=ADMIN).json()
    assert status["queues"] and all(queue["backend"] == "a" for queue in status["queues"])
    assert removed.upstream not in gateway.backends
    seen = len(two[1].emulator.requests)
    time.sleep(0.5)  # five /api/ps polling intervals
    assert len(two[1].emulator.requests) == seen
    assert _chat(server.url + "/llm", model).status_code == 200  # served by the backend that is left
    assert two[0].emulator.stats.completed == 1


def test_an_unnamed_backend_added_after_a_removal_gets_a_name_of_its_own(
    two: list[EmulatorServer], host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(upstreams=(two[0].url, two[1].url))  # backend-0 and backend-1
    with httpx.Client(base_url=server.url + "/llm/_gateway/backends", headers=ADMIN) as client:
        assert client.delete("/backend-0").status_code == 200
        added = client.post("", json={"url": two[0].url})
        assert added.status_code == 200
        names = [b["name"] for b in added.json()["backends"]]
        assert len(names) == 2 and len(set(names)) == 2 and names[0] == "backend-1"


def test_a_removed_backend_takes_its_memory_load_lock_and_traffic_model_along() -> None:
    settings = Settings.from_mapping(
        {
            "upstreams": [
                {"url": "http://10.0.0.1:11434", "name": "a"},
                {"url": "http://10.0.0.2:11434", "name": "b", "vram_budget": 2**30},
            ]
        }
    )
    gateway = OllamaGateway(settings)
    removed = gateway.registry.by_name("b")
    assert removed is not None and removed.memory.budget == 2**30
    removed.traffic.observe("llama3.2", cold=True, principal="alice")
    removed.traffic.warmed.add("llama3.2")
    removed.num_ctx["llama3.2"] = 4096
    # What a side table keyed by the backend's name would keep alive after the removal.
    kept = [
        weakref.ref(removed.traffic.warmed),
        weakref.ref(removed.memory.domain.load_lock),
        weakref.ref(removed.models.in_flight),
    ]
    gateway.registry.remove("b")  # no event loop: nothing is in flight, its client is not waited for
    del removed
    gc.collect()
    assert [ref() for ref in kept] == [None, None, None]
    lifecycle = gateway.lifecycle
    assert lifecycle is not None and [b.name for b in lifecycle.backends] == ["a"]
    assert list(lifecycle.guard.memories()) == [lifecycle.backends[0].memory]


def test_a_removed_backend_takes_its_slots_queues_and_model_turns_along() -> None:
    settings = Settings.from_mapping(
        {
            "upstreams": [
                {"url": "http://10.0.0.1:11434", "name": "a"},
                {"url": "http://10.0.0.2:11434", "name": "b", "parallel": 2},
            ],
            "max_loaded_models": 1,
        }
    )
    gateway = OllamaGateway(settings)
    removed = gateway.registry.by_name("b")
    assert removed is not None and gateway.admission.grouped
    lease = gateway.admission.try_admit_turn(removed.slots, "generate", "llama3.2:latest")
    assert lease is not None
    lease.release()
    pool = removed.slots.pools["llama3.2:latest", "generate"]
    assert pool.capacity == 2 and removed.slots.turns is not None
    # What a side table keyed by the backend's name would keep alive after the removal.
    kept = [weakref.ref(pool), weakref.ref(removed.slots.turns)]
    del lease, pool
    gateway.registry.remove("b")  # no event loop: nothing is in flight, its client is not waited for
    del removed
    gc.collect()
    assert [ref() for ref in kept] == [None, None]


def test_a_backends_view_reports_its_pre_warms_and_the_memory_of_its_loaded_models() -> None:
    gateway = OllamaGateway(Settings(upstreams=("http://10.0.0.1:11434",)))
    (backend,) = gateway.registry.backends
    backend.traffic.observe("llama3.2", cold=True)
    backend.traffic.issued, backend.traffic.hits = 2, 1
    backend.models.loaded["llama3.2:latest"] = Loaded("llama3.2:latest", 4096, 3 * 2**30, 2 * 2**30, time.time() + 60)
    (view,) = gateway.registry.views()
    assert view.prewarm == (2, 1, 1)  # pre-warm loads, hits, cold requests
    assert view.vram == {"llama3.2:latest": 2 * 2**30}
