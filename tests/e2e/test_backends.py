"""Three emulated Ollama backends behind one gateway: affinity, failover, breakers, drain."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from ollama_asgi import OllamaGateway
from ollama_asgi.testing import EmulatorServer
from tests.conftest import ADMIN, API_KEY, AUTH
from tests.support.processes import GatewayProcess
from tests.support.rawhttp import request, wait_until
from tests.support.redis_server import RedisServer
from tests.support.server import ServerThread

MODELS = ["llama3.2", "qwen2.5:0.5b", "qwen3:0.6b", "llava:7b", "nomic-embed-text"]


@pytest.fixture
def three() -> Iterator[list[EmulatorServer]]:
    servers = [EmulatorServer().start() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def multi(three: list[EmulatorServer], host_factory: Callable[..., ServerThread]) -> Callable[..., ServerThread]:
    def start(**overrides: object) -> ServerThread:
        options: dict[str, object] = {
            "upstreams": tuple({"url": s.url, "name": f"gpu{i}"} for i, s in enumerate(three)),
            "health_interval": 0.2,
            "breaker_failures": 2,
            "breaker_cooldown": 0.3,
        }
        options.update(overrides)
        return host_factory(**options)

    return start


def _gateway(server: ServerThread) -> OllamaGateway:
    return next(r.app for r in server.app.routes if isinstance(getattr(r, "app", None), OllamaGateway))  # type: ignore[attr-defined]


def _where_loaded(three: list[EmulatorServer]) -> dict[str, list[int]]:
    places: dict[str, list[int]] = {}
    for i, server in enumerate(three):
        for name in server.emulator.loaded_models():
            places.setdefault(name, []).append(i)
    return places


def _body(model: str, **extra: object) -> dict[str, object]:
    if model.startswith("nomic"):
        return {"model": model, "input": "x"}
    return {"model": model, "messages": [{"role": "user", "content": "a b"}], "stream": False, **extra}


def _path(model: str) -> str:
    return "/api/embed" if model.startswith("nomic") else "/api/chat"


async def test_each_model_lives_on_one_backend(three: list[EmulatorServer], multi: Callable[..., ServerThread]) -> None:
    for emulator in three:
        emulator.emulator.max_loaded_models = 6  # room for every model: only placement decides
    server = multi()
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        for _ in range(4):
            responses = await asyncio.gather(*(client.post(_path(m), json=_body(m)) for m in MODELS))
            assert [r.status_code for r in responses] == [200] * len(MODELS)
    places = _where_loaded(three)
    assert len(places) == len(MODELS)
    assert all(len(backends) == 1 for backends in places.values()), places
    assert len({b for backends in places.values() for b in backends}) >= 2  # spread, not piled on one
    assert sum(s.emulator.stats.loads for s in three) == len(MODELS)


async def test_a_dead_backend_loses_no_request_that_had_not_started(
    three: list[EmulatorServer], multi: Callable[..., ServerThread]
) -> None:
    server = multi()
    gateway = _gateway(server)
    home = gateway.placement.ranking("llama3.2", gateway.placement.backends)[0].name
    victim = three[int(home[-1])]
    victim.emulator.token_interval = 0.05
    streaming = json.dumps({**_body("llama3.2"), "stream": True, "options": {"num_predict": 60}}).encode()
    started = request(server.url + "/llm/api/chat", body=streaming, headers=AUTH)
    first = next(started.iter_chunks())
    assert b'"done":false' in first
    victim.kill()
    # The started stream ends with a terminal error line, not a silent cut.
    rest = b"".join(started.iter_chunks())
    assert json.loads(rest.strip().splitlines()[-1]).get("error")
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        responses = await asyncio.gather(*(client.post("/api/chat", json=_body("llama3.2")) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20  # retried on, then placed on, the survivors
    assert sum(s.emulator.stats.completed for s in three if s is not victim) == 20


def test_the_breaker_opens_on_a_dead_backend_and_closes_when_it_returns(
    three: list[EmulatorServer], multi: Callable[..., ServerThread]
) -> None:
    server = multi()
    gateway = _gateway(server)
    httpx.get(server.url + "/llm/api/tags", headers=AUTH)  # starts the health checks
    three[1].kill()
    wait_until(lambda: gateway.placement.by_name("gpu1").breaker == "open", timeout=5)  # type: ignore[union-attr]
    health = httpx.get(server.url + "/llm/_gateway/health").json()
    assert {b["name"]: b["breaker"] for b in health["backends"]}["gpu1"] == "open"
    for _ in range(10):  # nothing is sent to an open backend
        assert httpx.post(server.url + "/llm/api/chat", json=_body("qwen2.5:0.5b"), headers=AUTH).status_code == 200
    three[1].restart()
    wait_until(lambda: gateway.placement.by_name("gpu1").breaker == "closed", timeout=5)  # type: ignore[union-attr]
    assert gateway.placement.by_name("gpu1").opens >= 1  # type: ignore[union-attr]


async def test_draining_a_backend_lets_in_flight_requests_finish(
    three: list[EmulatorServer], multi: Callable[..., ServerThread]
) -> None:
    server = multi()
    gateway = _gateway(server)
    home = gateway.placement.ranking("llama3.2", gateway.placement.backends)[0].name
    emulator = three[int(home[-1])].emulator
    emulator.token_interval = 0.03
    async with httpx.AsyncClient(base_url=server.url + "/llm", timeout=30) as client:
        running = asyncio.ensure_future(
            client.post("/api/chat", json={**_body("llama3.2"), "options": {"num_predict": 40}}, headers=AUTH)
        )
        for _ in range(500):
            if emulator.stats.active:
                break
            await asyncio.sleep(0.01)
        denied = await client.post(f"/_gateway/backends/{home}/drain", headers=AUTH)
        assert denied.status_code == 403
        drained = await client.post(f"/_gateway/backends/{home}/drain", headers=ADMIN)
        assert drained.status_code == 200
        assert {b["name"]: b["draining"] for b in drained.json()["backends"]}[home] is True
        before = emulator.stats.completed
        others = await asyncio.gather(
            *(client.post("/api/chat", json=_body("llama3.2"), headers=AUTH) for _ in range(5))
        )
        assert [r.status_code for r in others] == [200] * 5
        assert (await running).status_code == 200  # the in-flight request finished on the drained backend
        assert emulator.stats.completed == before + 1
        assert (await client.post(f"/_gateway/backends/{home}/undrain", headers=ADMIN)).status_code == 200


async def test_backends_can_be_added_and_removed_at_run_time(
    three: list[EmulatorServer], multi: Callable[..., ServerThread]
) -> None:
    server = multi(upstreams=({"url": three[0].url, "name": "gpu0"},))
    async with httpx.AsyncClient(base_url=server.url + "/llm/_gateway/backends", headers=ADMIN) as client:
        added = await client.post("", json={"url": three[1].url, "name": "gpu1", "parallel": 2})
        assert added.status_code == 200 and [b["name"] for b in added.json()["backends"]] == ["gpu0", "gpu1"]
        assert (await client.post("", json={"url": three[1].url, "name": "gpu1"})).status_code == 409
        assert (await client.delete("/gpu0")).status_code == 200
        assert (await client.delete("/gpu1")).status_code == 409  # never the last one
        response = await client.post(server.url + "/llm/api/chat", json=_body("qwen2.5:0.5b"), headers=AUTH)
    assert response.status_code == 200
    assert three[1].emulator.stats.completed == 1 and three[0].emulator.stats.completed == 0


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


async def test_three_workers_agree_on_placement_under_a_cold_burst(
    three: list[EmulatorServer], redis_server: RedisServer
) -> None:
    for server in three:
        server.emulator.load_base_seconds = 0.4
        server.emulator.max_loaded_models = 6
    env = {
        "OLLAMA_ASGI_UPSTREAMS": ",".join(s.url for s in three),
        "OLLAMA_ASGI_REDIS_URL": redis_server.url,
        "OLLAMA_ASGI_PARALLEL": "2",
        "OLLAMA_ASGI_MAX_QUEUE": "300",
        "OLLAMA_ASGI_API_KEYS": f"ci={API_KEY}",
    }
    workers = [GatewayProcess(env) for _ in range(3)]
    try:
        for worker in workers:
            worker.wait_ready()
        async with httpx.AsyncClient(headers=AUTH, timeout=60) as client:
            responses = await asyncio.gather(
                *(
                    client.post(workers[i % 3].url + _path(m), json=_body(m))
                    for i in range(45)
                    for m in MODELS[i % 5 : i % 5 + 1]
                )
            )
    finally:
        for worker in workers:
            worker.stop()
    assert [r.status_code for r in responses] == [200] * 45
    assert sum(s.emulator.stats.loads for s in three) == len(MODELS)  # one load per model, across everything
    assert all(len(b) == 1 for b in _where_loaded(three).values())


def test_model_listings_merge_every_backend(three: list[EmulatorServer], multi: Callable[..., ServerThread]) -> None:
    server = multi()
    client = httpx.Client(base_url=server.url + "/llm", headers=AUTH, timeout=30)
    tags = client.get("/api/tags").json()["models"]
    assert len(tags) == len({m["model"] for m in tags}) >= 5  # each model once, whichever backends hold it
    for model in ("llama3.2", "qwen2.5:0.5b"):
        assert client.post("/api/chat", json=_body(model)).status_code == 200
    loaded = {m["model"] for m in client.get("/api/ps").json()["models"]}
    assert {"llama3.2:latest", "qwen2.5:0.5b"} <= loaded
    ids = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert "llama3.2:latest" in ids


async def test_a_hot_model_spills_to_a_second_backend(
    three: list[EmulatorServer], multi: Callable[..., ServerThread]
) -> None:
    for emulator in three:
        emulator.emulator.token_interval = 0.02
    server = multi(parallel=1, spill_wait=0.3, max_queue=200)
    body = {**_body("llama3.2"), "options": {"num_predict": 5}}
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=60) as client:
        for _ in range(3):  # the gateway learns the service time (about 0.1 s)
            assert (await client.post("/api/chat", json=body)).status_code == 200
        responses = await asyncio.gather(*(client.post("/api/chat", json=body) for _ in range(40)))
    assert [r.status_code for r in responses] == [200] * 40
    places = _where_loaded(three)["llama3.2:latest"]
    assert len(places) == 2, places  # its home plus one spill backend, not all three
    served = sorted(s.emulator.stats.completed for s in three)
    assert served[0] == 0 and served[1] > 0


async def test_backend_changes_reach_every_worker_through_redis(
    three: list[EmulatorServer], redis_server: RedisServer
) -> None:
    env = {
        "OLLAMA_ASGI_UPSTREAMS": ",".join(s.url for s in three[:2]),
        "OLLAMA_ASGI_REDIS_URL": redis_server.url,
        "OLLAMA_ASGI_HEALTH_INTERVAL": "0.2",
        "OLLAMA_ASGI_API_KEYS": f"ci={API_KEY}",
        "OLLAMA_ASGI_ADMIN_API_KEYS": "ops=test-admin-key-1",
    }
    workers = [GatewayProcess(env) for _ in range(2)]
    try:
        for worker in workers:
            worker.wait_ready()
        async with httpx.AsyncClient(headers=ADMIN, timeout=30) as client:
            await client.get(workers[1].url + "/api/tags")  # worker 1 starts following changes
            assert (await client.post(workers[0].url + "/_gateway/backends/backend-0/drain")).status_code == 200
            added = await client.post(workers[0].url + "/_gateway/backends", json={"url": three[2].url, "name": "gpu2"})
            assert added.status_code == 200
            for _ in range(50):
                view = (await client.get(workers[1].url + "/_gateway/backends")).json()["backends"]
                if {b["name"]: b["draining"] for b in view} == {"backend-0": True, "backend-1": False, "gpu2": False}:
                    break
                await asyncio.sleep(0.1)
            assert {b["name"]: b["draining"] for b in view} == {"backend-0": True, "backend-1": False, "gpu2": False}
    finally:
        for worker in workers:
            worker.stop()
