"""Model lifecycle end to end against the emulator: single-flight loads, num_ctx, VRAM guard, pre-warming."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from ollama_asgi.testing import EmulatorServer, Fault
from tests.conftest import ADMIN, API_KEY, AUTH
from tests.support.processes import GatewayProcess
from tests.support.rawhttp import request, wait_until
from tests.support.redis_server import RedisServer
from tests.support.server import ServerThread


def _chat(model: str = "llama3.2", content: str = "hello there", **options: object) -> dict[str, object]:
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": content}], "stream": False}
    if options:
        body["options"] = options
    return body


def _sent_num_ctx(emulator: EmulatorServer, path: str = "/api/chat") -> list[int]:
    return [
        r.json["options"]["num_ctx"]
        for r in emulator.emulator.requests
        if r.path == path and r.json and r.json.get("messages")
    ]


async def test_a_cold_burst_of_100_causes_exactly_one_load(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.load_base_seconds = 0.5
    emulator.emulator.parallel = 8
    emulator.emulator.token_interval = 0.002
    server = host_factory(parallel=2, max_queue=200)
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/api/chat", json=_chat()) for _ in range(100)))
    assert [r.status_code for r in responses] == [200] * 100
    assert emulator.emulator.stats.loads == 1
    assert emulator.emulator.stats.max_active <= 2
    loads = [r for r in emulator.emulator.requests if r.path == "/api/generate" and r.json and not r.json.get("prompt")]
    assert len(loads) == 1 and loads[0].json["keep_alive"] == "30m"  # type: ignore[index]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


async def test_a_cold_burst_across_three_workers_causes_one_load(
    emulator: EmulatorServer, redis_server: RedisServer
) -> None:
    emulator.emulator.load_base_seconds = 0.5
    emulator.emulator.parallel = 8
    env = {
        "OLLAMA_ASGI_UPSTREAMS": emulator.url,
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
                *(client.post(workers[i % 3].url + "/api/chat", json=_chat()) for i in range(60))
            )
    finally:
        for worker in workers:
            worker.stop()
    assert [r.status_code for r in responses] == [200] * 60
    assert emulator.emulator.stats.loads == 1
    assert emulator.emulator.stats.max_active <= 2


def test_the_first_clients_disconnect_does_not_abort_the_load(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.load_base_seconds = 0.6
    server = host_factory()
    first = request(server.url + "/llm/api/chat", body=json.dumps(_chat()).encode(), headers=AUTH)
    wait_until(
        lambda: (
            emulator.emulator.stats.loads == 0 and any(r.path == "/api/generate" for r in emulator.emulator.requests)
        )
    )
    first.close()  # Ollama would abort the load now
    second = httpx.post(server.url + "/llm/api/chat", json=_chat(), headers=AUTH, timeout=10)
    assert second.status_code == 200
    assert emulator.emulator.stats.aborted_loads == 0
    assert emulator.emulator.stats.loads == 1


async def test_a_failed_load_is_answered_to_every_waiter(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.load_base_seconds = 0.3
    message = "model requires more system memory (9.9 GiB) than is available (1.0 GiB)"
    emulator.emulator.inject(Fault(path="/api/generate", kind="http_error", status=500, message=message))
    server = host_factory()
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        responses = await asyncio.gather(*(client.post("/api/chat", json=_chat()) for _ in range(10)))
    assert {r.status_code for r in responses} == {500}
    assert {r.json()["error"] for r in responses} == {message}
    assert not [r for r in emulator.emulator.requests if r.path == "/api/chat"]


async def test_a_load_refused_by_ollamas_full_queue_tells_every_waiter_when_to_retry(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    message = "server busy, please try again.  maximum pending requests exceeded"
    emulator.emulator.inject(Fault(path="/api/generate", kind="http_error", status=503, message=message))
    server = host_factory()
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        responses = await asyncio.gather(*(client.post("/api/chat", json=_chat()) for _ in range(5)))
    assert {r.status_code for r in responses} == {503}
    assert {r.json()["error"] for r in responses} == {message}
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses)


def test_waiting_too_long_for_a_load_answers_503_with_retry_after(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.load_base_seconds = 3.0
    server = host_factory(load_wait_timeout=0.3)
    response = httpx.post(server.url + "/llm/api/chat", json=_chat(), headers=AUTH, timeout=10)
    assert response.status_code == 503
    assert "still loading" in response.json()["error"]
    assert int(response.headers["retry-after"]) >= 1


def test_openai_streams_get_keepalive_comments_while_the_model_loads(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.load_base_seconds = 0.5
    server = host_factory(sse_keepalive=0.1)
    body = json.dumps({"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "x"}]}).encode()
    events = [
        e
        for c in request(server.url + "/llm/v1/chat/completions", body=body, headers=AUTH).chunks()
        for e in c.split(b"\n\n")
        if e
    ]
    assert events[0].startswith(b": ")
    assert events[-1] == b"data: [DONE]"


def test_num_ctx_is_the_smallest_bucket_that_fits(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(num_ctx_buckets=(2048, 4096, 8192), num_predict_reserve=512)
    client = httpx.Client(base_url=server.url + "/llm", headers=AUTH, timeout=30)
    assert client.post("/api/chat", json=_chat(model="qwen2.5:0.5b")).status_code == 200
    long_prompt = "word " * 2000  # about 2,500 tokens by the estimate
    assert client.post("/api/chat", json=_chat(model="llama3.2", content=long_prompt)).status_code == 200
    assert _sent_num_ctx(emulator) == [2048, 4096]


def test_sticky_buckets_avoid_reloads(emulator: EmulatorServer, host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(num_ctx_buckets=(2048, 4096, 8192), num_predict_reserve=512)
    client = httpx.Client(base_url=server.url + "/llm", headers=AUTH, timeout=30)
    client.post("/api/chat", json=_chat(content="word " * 3000))  # loads with 8192
    for _ in range(5):
        assert client.post("/api/chat", json=_chat()).status_code == 200  # 2048 would do, 8192 is loaded
    assert _sent_num_ctx(emulator) == [8192] * 6
    assert emulator.emulator.stats.reloads == 0
    assert emulator.emulator.stats.loads == 1


def test_mixing_openai_and_native_clients_does_not_reload(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread], llm_url: str
) -> None:
    native = httpx.Client(base_url=llm_url, headers=AUTH, timeout=30)
    oai = openai.OpenAI(base_url=llm_url + "/v1", api_key=API_KEY)
    for _ in range(3):
        assert native.post("/api/chat", json=_chat(num_ctx=8192)).status_code == 200
        oai.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert emulator.emulator.stats.loads == 1 and emulator.emulator.stats.reloads == 0
    assert not [r for r in emulator.emulator.requests if r.path.startswith("/v1/")]  # served natively
    assert set(_sent_num_ctx(emulator)) == {8192}


def test_client_num_ctx_is_honoured_up_to_the_model_cap(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(model_max_num_ctx={"qwen2.5*": 16384})
    client = httpx.Client(base_url=server.url + "/llm", headers=AUTH, timeout=30)
    assert client.post("/api/chat", json=_chat(model="qwen2.5:0.5b", num_ctx=8192)).status_code == 200
    assert client.post("/api/chat", json=_chat(model="qwen2.5:0.5b", num_ctx=100000)).status_code == 200
    assert _sent_num_ctx(emulator) == [8192, 16384]


def _load_requests(emulator: EmulatorServer) -> int:
    return len(
        [r for r in emulator.emulator.requests if r.path == "/api/generate" and not (r.json or {}).get("prompt")]
    )


def test_a_num_ctx_under_ollamas_floor_is_loaded_once(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(num_ctx_buckets=(1024, 4096), num_predict_reserve=256)
    client = httpx.Client(base_url=server.url + "/llm", headers=AUTH, timeout=30)
    for _ in range(3):  # Ollama raises num_ctx 2 to 4, and a vision model's 1024 to 2048
        assert client.post("/api/chat", json=_chat(num_ctx=2)).status_code == 200
        assert client.post("/api/chat", json=_chat(model="llava:7b")).status_code == 200
    assert _load_requests(emulator) == 2
    assert (_sent_num_ctx(emulator)[:2], emulator.emulator.stats.reloads) == ([4, 2048], 0)


def test_prompt_over_the_model_limit_gets_a_clear_400(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory()
    response = httpx.post(
        server.url + "/llm/api/chat", json=_chat(model="llava:7b", content="word " * 20000), headers=AUTH
    )
    assert response.status_code == 400
    assert "4096-token context window" in response.json()["error"]
    assert not [r for r in emulator.emulator.requests if r.path == "/api/chat"]


def test_truncation_drops_oldest_messages_and_says_so(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(context_overflow="truncate")
    history = [{"role": "system", "content": "be brief"}]
    for i in range(30):
        history.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 500})
    history.append({"role": "user", "content": "and now?"})
    body = {"model": "llava:7b", "messages": history, "stream": False}
    response = httpx.post(server.url + "/llm/api/chat", json=body, headers=AUTH)
    assert response.status_code == 200
    dropped = int(response.headers["x-context-truncated"])
    assert dropped > 0
    sent = [r for r in emulator.emulator.requests if r.path == "/api/chat"][-1].json
    assert sent is not None
    assert sent["messages"][0]["role"] == "system" and sent["messages"][-1]["content"] == "and now?"
    assert len(sent["messages"]) == len(history) - dropped


def test_keep_alive_is_owned_by_the_gateway_for_ordinary_users(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(keep_alive="10m")
    client = httpx.Client(base_url=server.url + "/llm", timeout=30)
    assert client.post("/api/chat", json={**_chat(), "keep_alive": -1}, headers=AUTH).status_code == 200
    assert client.post("/api/chat", json={**_chat(), "keep_alive": "1h"}, headers=ADMIN).status_code == 200
    sent = [r.json["keep_alive"] for r in emulator.emulator.requests if r.path == "/api/chat" and r.json]
    assert sent == ["10m", "1h"]
    unload = {"model": "llama3.2", "keep_alive": 0}
    assert client.post("/api/generate", json=unload, headers=AUTH).status_code == 403
    assert client.post("/api/generate", json=unload, headers=ADMIN).json()["done_reason"] == "unload"


def test_vram_guard_keeps_loads_within_budget_and_evicts_the_least_valuable(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    # qwen2.5 ~0.40 GB, qwen3 ~0.52 GB, llama3.2 ~2.0 GB; a 2.7 GB budget holds llama3.2 plus one small model.
    server = host_factory(vram_budget=int(2.7e9), vram_margin=0.05)
    client = httpx.Client(base_url=server.url + "/llm", headers=AUTH, timeout=30)

    def loaded_bytes() -> int:
        return sum(m.size_vram for m in emulator.emulator.loaded_models().values())

    for model in ("llama3.2", "llama3.2", "qwen2.5:0.5b", "llama3.2", "qwen3:0.6b", "llama3.2", "qwen2.5:0.5b"):
        assert client.post("/api/chat", json=_chat(model=model)).status_code == 200
        assert loaded_bytes() <= 2.7e9
    assert set(emulator.emulator.loaded_models()) == {"llama3.2:latest", "qwen2.5:0.5b"}
    assert emulator.emulator.stats.evictions == 0  # Ollama never had to evict: the gateway did it first


def test_a_model_in_use_is_never_evicted_and_a_load_that_needs_its_memory_waits_for_it(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.05
    server = host_factory(vram_budget=int(2.3e9), parallel=2)
    busy = request(
        server.url + "/llm/api/chat",
        body=json.dumps({**_chat(), "stream": True, "options": {"num_predict": 40}}).encode(),
        headers=AUTH,
    )
    wait_until(lambda: emulator.emulator.stats.active == 1)
    response = httpx.post(server.url + "/llm/api/chat", json=_chat(model="qwen2.5:0.5b"), headers=AUTH, timeout=30)
    assert response.status_code == 200  # served once the busy model was done, as Ollama's queue would
    lines = [json.loads(line) for chunk in busy.chunks() for line in chunk.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 40  # the busy model finished its answer
    assert "qwen2.5:0.5b" in emulator.emulator.loaded_models()


def _replay(server: ServerThread, trace: list[str], think: float) -> None:
    """Ask for each model in turn; users think for longer than a load takes, so loads started
    meanwhile finish before the next question (waiting for them makes the test independent of
    how busy this machine is)."""
    gateway = next(r.app for r in server.app.routes if hasattr(r, "app") and hasattr(r.app, "lifecycle"))  # type: ignore[attr-defined]
    client = httpx.Client(base_url=server.url + "/llm", headers=AUTH, timeout=30)
    lifecycle = gateway.lifecycle
    for model in trace:
        assert client.post("/api/chat", json=_chat(model=model)).status_code == 200
        time.sleep(think)
        wait_until(
            lambda: (
                not lifecycle.models["backend-0"].in_flight
                and not lifecycle.loader.loading
                and not lifecycle.prewarmer.tasks
            ),
            timeout=10,
        )


def test_prewarming_cuts_cold_starts_where_memory_is_free(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.load_base_seconds = 0.05
    session = ["qwen2.5:0.5b", "qwen3:0.6b", "llama3.2"]  # a pipeline, run now and then
    cold = {}
    patterns: dict[bool, str] = {}
    for prewarm in (False, True):
        server = host_factory(prewarm=prewarm, ps_interval=0.05)
        gateway = next(r.app for r in server.app.routes if hasattr(r, "app") and hasattr(r.app, "lifecycle"))  # type: ignore[attr-defined]
        models = gateway.lifecycle.models["backend-0"]
        for _ in range(8):
            for name in list(emulator.emulator.loaded_models()):  # gone between runs, as keep_alive makes them
                httpx.post(emulator.url + "/api/generate", json={"model": name, "keep_alive": 0})
            wait_until(lambda models=models: not emulator.emulator.loaded_models() and not models.loaded)
            _replay(server, session, think=0.05)
        traffic = gateway.registry.by_name("backend-0").traffic
        cold[prewarm] = traffic.misses  # requests that found their model cold
        patterns[prewarm] = "".join("C" if c else "." for _, c in traffic.recent)
    assert cold[False] == 24  # every request of every run
    # Once the pipeline is learnt, each run's first model is the only cold one.
    assert cold[True] <= 8 + 2 * 2, (cold, patterns)


async def test_concurrent_loads_of_different_models_stay_within_budget(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.load_base_seconds = 0.2
    server = host_factory(vram_budget=int(2.5e9), parallel=4)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        for _ in range(300):
            peak = max(peak, sum(m.size_vram for m in emulator.emulator.loaded_models().values()))
            await asyncio.sleep(0.005)

    watcher = asyncio.ensure_future(watch())
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        models = ["llama3.2", "qwen3:0.6b", "qwen2.5:0.5b"] * 3
        responses = await asyncio.gather(*(client.post("/api/chat", json=_chat(model=m)) for m in models))
    watcher.cancel()
    assert {r.status_code for r in responses} <= {200, 503}
    assert any(r.status_code == 200 for r in responses)
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
    assert 0 < peak <= 2.5e9  # two loads never counted the same free memory


def test_a_real_tokenizer_lets_a_prompt_fit_that_the_estimate_would_refuse(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from tests.test_context import _word_tokenizer

    word = "pneumonoultramicroscopicsilicovolcanoconiosis"
    path = str(tmp_path / "tokenizer.json")
    _word_tokenizer(path, [word])
    prompt = " ".join([word] * 400)  # ~4,600 tokens by length, 400 by the tokenizer
    body = _chat(model="llava:7b", content=prompt, num_predict=64)
    estimated = host_factory()
    assert httpx.post(estimated.url + "/llm/api/chat", json=body, headers=AUTH).status_code == 400
    counted = host_factory(tokenizers={"llava*": path})
    assert httpx.post(counted.url + "/llm/api/chat", json=body, headers=AUTH).status_code == 200
    assert _sent_num_ctx(emulator)[-1] == 2048


def test_a_configured_system_prompt_is_warmed_right_after_the_load(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    prefix = "You are the support assistant of Example Corp. Answer briefly."
    server = host_factory(warm_prompts={"llama3.2*": prefix})
    body = {"model": "llama3.2", "messages": [{"role": "system", "content": prefix}, {"role": "user", "content": "hi"}]}
    assert httpx.post(server.url + "/llm/api/chat", json={**body, "stream": False}, headers=AUTH).status_code == 200
    paths = [(r.path, (r.json or {}).get("system")) for r in emulator.emulator.requests if r.path.startswith("/api/")]
    generate_calls = [p for p in paths if p[0] == "/api/generate"]
    assert generate_calls[-1] == ("/api/generate", prefix)  # the warm-up, after the load and before the chat
    assert paths.index(generate_calls[-1]) < paths.index(("/api/chat", None))
    assert (
        httpx.post(
            server.url + "/llm/api/chat", json={**body, "model": "qwen2.5:0.5b", "stream": False}, headers=AUTH
        ).status_code
        == 200
    )
    assert (
        sum(1 for r in emulator.emulator.requests if r.json and r.json.get("system") == prefix) == 1
    )  # only for llama3.2
