"""The scheduler as seen over HTTP: loads, reloads, eviction, slots, the pending queue, keep_alive."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from ollama_asgi.testing import EmulatedModel, EmulatorServer

from .conftest import Serve, wait_for

GIB = 2**30
SMALL = (
    EmulatedModel(name="alpha", size=GIB),
    EmulatedModel(name="beta", size=GIB),
    EmulatedModel(name="gamma", size=GIB),
)


def generate(url: str, model: str = "llama3.2", **extra: object) -> httpx.Response:
    body = {"model": model, "prompt": "x", "stream": False, **extra}
    return httpx.post(f"{url}/api/generate", json=body, timeout=10)


async def agenerate(client: httpx.AsyncClient, model: str = "llama3.2", **extra: object) -> httpx.Response:
    return await client.post("/api/generate", json={"model": model, "prompt": "x", "stream": False, **extra})


def test_ps_lists_a_loaded_model(server: EmulatorServer) -> None:
    generate(server.url)
    models = httpx.get(f"{server.url}/api/ps").json()["models"]
    assert [m["name"] for m in models] == ["llama3.2:latest"]
    entry = models[0]
    assert list(entry) == ["name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"]
    assert entry["context_length"] == 4096
    assert entry["size_vram"] == entry["size"] > 2_019_393_189


def test_ps_is_empty_before_any_load(client: httpx.Client) -> None:
    assert client.get("/api/ps").json() == {"models": []}


def test_same_runner_options_reuse_the_loaded_model(server: EmulatorServer) -> None:
    generate(server.url, options={"num_ctx": 2048, "temperature": 0.1, "num_gpu": 99})
    generate(server.url, options={"num_ctx": 2048, "temperature": 0.9, "seed": 7})  # num_gpu -1: not compared
    assert (server.emulator.stats.loads, server.emulator.stats.reloads) == (1, 0)


def test_changing_num_ctx_reloads_the_model(server: EmulatorServer) -> None:
    generate(server.url, options={"num_ctx": 2048})
    generate(server.url, options={"num_ctx": 8192})
    stats = server.emulator.stats
    assert (stats.loads, stats.reloads, stats.unloads) == (2, 1, 1)
    assert server.emulator.loaded_models()["llama3.2:latest"].num_ctx == 8192


def test_openai_requests_use_the_default_context_and_so_reload(server: EmulatorServer) -> None:
    generate(server.url, options={"num_ctx": 8192})
    httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]},
    )
    assert server.emulator.stats.reloads == 1
    assert server.emulator.loaded_models()["llama3.2:latest"].num_ctx == 4096


def test_num_ctx_above_the_training_context_is_clamped_before_comparing(server: EmulatorServer) -> None:
    generate(server.url, model="llava:7b", options={"num_ctx": 9000})
    generate(server.url, model="llava:7b", options={"num_ctx": 100000})
    assert server.emulator.stats.reloads == 0


async def test_parallel_slots_bound_concurrent_generation(serve: Serve) -> None:
    server = serve(parallel=2, token_interval=0.005)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        replies = await asyncio.gather(*(agenerate(client, options={"num_predict": 4}) for _ in range(10)))
    assert [r.status_code for r in replies] == [200] * 10
    assert server.emulator.stats.max_active == 2
    assert server.emulator.stats.completed == 10


async def test_one_slot_serialises_requests(serve: Serve) -> None:
    server = serve(parallel=1, token_interval=0.002)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await asyncio.gather(*(agenerate(client, options={"num_predict": 3}) for _ in range(5)))
    assert server.emulator.stats.max_active == 1


async def test_loaded_model_queues_without_bound_past_max_queue(serve: Serve) -> None:
    server = serve(max_queue=1, token_interval=0.002)
    generate(server.url)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        replies = await asyncio.gather(*(agenerate(client) for _ in range(6)))
    assert {r.status_code for r in replies} == {200}


async def test_full_pending_queue_answers_503(serve: Serve) -> None:
    server = serve(max_queue=1, load_base_seconds=0.3)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        loading = asyncio.create_task(agenerate(client))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(agenerate(client))
        await asyncio.sleep(0.05)
        rejected = await agenerate(client)
        assert rejected.status_code == 503
        assert rejected.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
        assert (await loading).status_code == (await waiting).status_code == 200
    assert server.emulator.stats.rejected_busy == 1
    assert server.emulator.stats.loads == 1


async def test_concurrent_first_requests_load_the_model_once(serve: Serve) -> None:
    server = serve(load_base_seconds=0.1, parallel=4)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await asyncio.gather(*(agenerate(client) for _ in range(5)))
    assert server.emulator.stats.loads == 1


async def test_load_duration_includes_the_load_time(serve: Serve) -> None:
    server = serve(load_base_seconds=0.2)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        body = (await agenerate(client)).json()
    assert body["load_duration"] >= 0.2e9
    assert body["total_duration"] >= body["load_duration"]


def test_load_time_scales_with_model_size(serve: Serve) -> None:
    server = serve(models=[EmulatedModel(name="big", size=100_000_000)], load_bytes_per_second=1e9)
    assert generate(server.url, model="big").json()["load_duration"] >= 0.1e9


async def test_first_client_leaving_during_load_aborts_it_and_the_next_loads_afresh(serve: Serve) -> None:
    server = serve(load_base_seconds=0.4)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        impatient = asyncio.create_task(agenerate(client))
        await asyncio.sleep(0.05)
        patient = asyncio.create_task(agenerate(client))
        await asyncio.sleep(0.1)
        impatient.cancel()
        assert (await patient).status_code == 200
    stats = server.emulator.stats
    assert (stats.aborted_loads, stats.loads) == (1, 1)
    assert stats.cancellations == 1


def test_vram_budget_evicts_the_idle_model(serve: Serve) -> None:
    server = serve(models=SMALL, vram_bytes=int(1.5 * GIB))
    generate(server.url, model="alpha")
    generate(server.url, model="beta")
    assert list(server.emulator.loaded_models()) == ["beta:latest"]
    assert (server.emulator.stats.evictions, server.emulator.stats.unloads) == (1, 1)


def test_max_loaded_models_evicts_the_shortest_keep_alive_first(serve: Serve) -> None:
    server = serve(models=SMALL, max_loaded_models=2)
    generate(server.url, model="alpha", keep_alive="1h")
    generate(server.url, model="beta", keep_alive="1m")
    generate(server.url, model="gamma")
    assert sorted(server.emulator.loaded_models()) == ["alpha:latest", "gamma:latest"]


async def test_eviction_waits_for_the_victims_requests(serve: Serve) -> None:
    server = serve(models=SMALL, max_loaded_models=1, token_interval=0.02)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        busy = asyncio.create_task(agenerate(client, model="alpha", options={"num_predict": 10}))
        await asyncio.sleep(0.05)
        other = await agenerate(client, model="beta")
        first = await busy
    assert first.json()["eval_count"] == 10
    assert other.status_code == 200


def test_model_bigger_than_memory_is_500(serve: Serve) -> None:
    server = serve(models=[EmulatedModel(name="huge", size=2 * GIB)], vram_bytes=GIB)
    response = generate(server.url, model="huge")
    assert response.status_code == 500
    assert response.json() == {"error": "model requires more system memory (2.0 GiB) than is available (1.0 GiB)"}


def test_embedding_models_run_with_one_slot(serve: Serve) -> None:
    server = serve(parallel=4)
    httpx.post(f"{server.url}/api/embed", json={"model": "all-minilm", "input": "a"})
    generate(server.url)
    loaded = server.emulator.loaded_models()
    assert (loaded["all-minilm:latest"].parallel, loaded["llama3.2:latest"].parallel) == (1, 4)


def test_keep_alive_zero_unloads_after_the_request(server: EmulatorServer) -> None:
    generate(server.url, keep_alive=0)
    assert server.emulator.loaded_models() == {}
    assert server.emulator.stats.unloads == 1


def test_keep_alive_expiry_really_unloads(server: EmulatorServer) -> None:
    generate(server.url, keep_alive=0.2)
    assert "llama3.2:latest" in server.emulator.loaded_models()
    wait_for(lambda: server.emulator.loaded_models() == {}, timeout=2)
    assert server.emulator.stats.unloads == 1


def test_negative_keep_alive_expires_about_292_years_ahead(server: EmulatorServer) -> None:
    # time.Duration(math.MaxInt64): "2318-..." in outputs captured in 2025-2026
    generate(server.url, keep_alive=-1)
    expires = httpx.get(f"{server.url}/api/ps").json()["models"][0]["expires_at"]
    assert int(expires[:4]) - time.gmtime().tm_year in (292, 293)


def test_last_explicit_keep_alive_wins(server: EmulatorServer) -> None:
    generate(server.url, keep_alive="1h")
    generate(server.url)
    assert server.emulator.loaded_models()["llama3.2:latest"].keep_alive == 3600


def test_default_keep_alive_applies_when_none_was_given(serve: Serve) -> None:
    server = serve(default_keep_alive=42.0)
    generate(server.url)
    assert server.emulator.loaded_models()["llama3.2:latest"].keep_alive == 42.0


def test_ps_orders_by_expiry_latest_first(serve: Serve) -> None:
    server = serve(models=SMALL)
    generate(server.url, model="alpha", keep_alive="1m")
    generate(server.url, model="beta", keep_alive="1h")
    names = [m["name"] for m in httpx.get(f"{server.url}/api/ps").json()["models"]]
    assert names == ["beta:latest", "alpha:latest"]


def test_copies_share_one_runner(server: EmulatorServer) -> None:
    httpx.post(f"{server.url}/api/copy", json={"source": "llama3.2", "destination": "mine"})
    generate(server.url)
    generate(server.url, model="mine")
    assert server.emulator.stats.loads == 1


@pytest.mark.parametrize("kind", ["expiry", "unload"])
def test_in_flight_request_delays_the_unload(serve: Serve, kind: str) -> None:
    server = serve(token_interval=0.02)
    with (
        httpx.Client(base_url=server.url, timeout=10) as client,
        client.stream(
            "POST", "/api/generate", json={"model": "llama3.2", "prompt": "x", "options": {"num_predict": 10}}
        ) as stream,
    ):
        lines = stream.iter_lines()
        next(lines)
        if kind == "unload":
            httpx.post(f"{server.url}/api/generate", json={"model": "llama3.2", "keep_alive": 0})
        assert "llama3.2:latest" in server.emulator.loaded_models()
        list(lines)
    if kind == "unload":
        wait_for(lambda: server.emulator.loaded_models() == {})
    time.sleep(0.01)
    assert server.emulator.stats.loads == 1
