"""The VRAM guard with an injected memory source (a real-GPU run is in bench/gpu)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from ollama_asgi.backend import Backend
from ollama_asgi.catalog import BackendModels, Loaded, ModelInfo
from ollama_asgi.errors import GatewayError
from ollama_asgi.inference import ModelLifecycle
from ollama_asgi.lifecycle import Loader
from ollama_asgi.settings import Settings
from ollama_asgi.upstream import Upstream
from ollama_asgi.vram import BackendMemory, DeviceMemory, MemoryDomain, VramGuard

GIB = 2**30


class FakeGpu:
    """A memory source whose readings follow what the test loads and unloads."""

    def __init__(self, total: int, context: int) -> None:
        self.total = total
        self.context = context
        self.models: dict[str, int] = {}

    def read(self) -> list[DeviceMemory]:
        return [DeviceMemory(0, self.total, self.context + sum(self.models.values()))]


_OPENED: list[Upstream] = []  # the clients the helpers make, closed after each test


@pytest.fixture(autouse=True)
async def _close_upstreams() -> AsyncIterator[None]:
    yield
    while _OPENED:
        await _OPENED.pop().aclose()


def _upstream(name: str = "") -> Upstream:
    upstream = Upstream("http://127.0.0.1:9", connect_timeout=1, read_timeout=1, name=name)
    _OPENED.append(upstream)
    return upstream


def _models(gpu: FakeGpu, loaded: dict[str, int]) -> BackendModels:
    models = BackendModels(_upstream())
    for name, size in loaded.items():
        models.loaded[name] = Loaded(name, 4096, size, size, time.time() + 600)
        gpu.models[name] = size
    return models  # its upstream does not answer, so /api/ps refreshes keep this table


def _guard(gpu: FakeGpu | None, budget: int | None = None) -> tuple[VramGuard, list[str]]:
    unloaded: list[str] = []

    def unload(models: BackendModels, name: str) -> None:
        unloaded.append(name)
        models.loaded.pop(name)
        if gpu is not None:
            gpu.models.pop(name)

    return VramGuard(budget=budget, margin=0.1, reserved=GIB // 2, source=gpu, unload=unload, settle=0.2), unloaded


async def test_a_model_that_fits_loads_without_evictions() -> None:
    gpu = FakeGpu(80 * GIB, GIB // 2)
    guard, unloaded = _guard(gpu)
    models = _models(gpu, {"a:latest": 20 * GIB})
    await guard.before_load(models, ModelInfo("b:latest", 8192, ("completion",), 10 * GIB), 4096)
    assert unloaded == []


async def test_idle_models_are_evicted_least_valuable_first() -> None:
    gpu = FakeGpu(40 * GIB, GIB // 2)
    guard, unloaded = _guard(gpu)
    models = _models(gpu, {"old:latest": 15 * GIB, "hot:latest": 15 * GIB})
    for _ in range(5):
        models.touch("hot:latest")
    await guard.before_load(models, ModelInfo("new:latest", 8192, ("completion",), 12 * GIB), 4096)
    assert unloaded == ["old:latest"]
    assert guard.evictions == 1


async def test_a_load_only_busy_models_could_make_room_for_waits_for_them_and_never_evicts_them() -> None:
    gpu = FakeGpu(40 * GIB, GIB // 2)
    guard, unloaded = _guard(gpu)
    models = _models(gpu, {"busy:latest": 30 * GIB})
    models.in_flight["busy:latest"] = 1
    load = asyncio.ensure_future(
        guard.before_load(models, ModelInfo("new:latest", 8192, ("completion",), 12 * GIB), 4096)
    )
    await asyncio.sleep(0.2)
    assert not load.done() and unloaded == []  # waiting its turn, as in Ollama's own queue
    del models.in_flight["busy:latest"]
    await asyncio.wait_for(load, 1)
    assert unloaded == ["busy:latest"]


async def test_a_pre_warm_that_only_busy_models_could_make_room_for_evicts_nothing_and_gives_up() -> None:
    gpu = FakeGpu(40 * GIB, GIB // 2)
    guard, unloaded = _guard(gpu)
    models = _models(gpu, {"busy:latest": 30 * GIB, "idle:latest": 3 * GIB})
    models.in_flight["busy:latest"] = 1
    with pytest.raises(GatewayError) as info:
        await guard.before_load(models, ModelInfo("next:latest", 8192, ("completion",), 12 * GIB), 4096, patient=False)
    assert info.value.reason == "models_busy" and "busy:latest" in info.value.message
    assert unloaded == []  # evicting the idle model would not have made room: it stays


async def test_without_nvml_a_budget_is_used() -> None:
    guard, unloaded = _guard(None, budget=10 * GIB)
    models = _models(FakeGpu(0, 0), {"a:latest": 6 * GIB})
    await guard.before_load(models, ModelInfo("b:latest", 8192, ("completion",), 5 * GIB), 4096)
    assert unloaded == ["a:latest"]


def test_fragmentation_does_not_count_the_cuda_context() -> None:
    gpu = FakeGpu(80 * GIB, GIB // 2)
    guard, _ = _guard(gpu)
    models = _models(gpu, {"a:latest": 20 * GIB})
    assert guard.fragmentation(models) == pytest.approx(0.0)
    gpu.models["leak"] = 8 * GIB  # memory held by nothing Ollama reports
    assert guard.fragmentation(models) == pytest.approx(0.1)


async def test_the_loaded_model_limit_is_enforced_before_ollama_evicts() -> None:
    guard, unloaded = _guard(None)
    guard.max_loaded = 2
    models = _models(FakeGpu(0, 0), {"a:latest": GIB, "b:latest": GIB})
    models.in_flight["a:latest"] = 1
    await guard.before_load(models, ModelInfo("c:latest", 8192, ("completion",), GIB), 4096)
    assert unloaded == ["b:latest"]  # the idle one, never the busy one


async def test_past_the_loaded_model_limit_a_load_waits_for_a_busy_model_to_finish() -> None:
    guard, unloaded = _guard(None)  # no memory reading at all, as on a CPU server
    guard.max_loaded = 1
    models = _models(FakeGpu(0, 0), {"a:latest": GIB})
    models.in_flight["a:latest"] = 1
    load = asyncio.ensure_future(guard.before_load(models, ModelInfo("b:latest", 8192, ("completion",), GIB), 4096))
    await asyncio.sleep(0.2)
    assert not load.done() and unloaded == []  # waiting its turn, not refused
    del models.in_flight["a:latest"]
    await asyncio.wait_for(load, 1)
    assert unloaded == ["a:latest"]
    assert guard.refusals == 0
    assert guard.history[-1]["free"] is None  # nothing measured, nothing made up


async def test_memory_an_eviction_releases_counts_before_nvml_shows_it() -> None:
    gpu = FakeGpu(40 * GIB, GIB // 2)
    unloaded: list[str] = []

    def unload(models: BackendModels, name: str) -> None:  # Ollama frees the memory a moment later
        unloaded.append(name)
        models.loaded.pop(name)
        asyncio.get_running_loop().call_later(0.05, gpu.models.pop, name)

    guard = VramGuard(budget=None, margin=0.1, reserved=GIB // 2, source=gpu, unload=unload, settle=1.0, max_loaded=2)
    models = _models(gpu, {"old:latest": 15 * GIB, "hot:latest": 15 * GIB})
    models.touch("hot:latest")
    await guard.before_load(models, ModelInfo("new:latest", 8192, ("completion",), 10 * GIB), 4096)
    assert unloaded == ["old:latest"]  # its 15 GiB make room; "hot" stays


async def test_past_the_loaded_model_limit_a_pre_warm_is_refused_while_the_models_are_busy() -> None:
    guard, unloaded = _guard(None)
    guard.max_loaded = 1
    models = _models(FakeGpu(0, 0), {"a:latest": GIB})
    models.in_flight["a:latest"] = 1
    with pytest.raises(GatewayError) as info:
        await guard.before_load(models, ModelInfo("b:latest", 8192, ("completion",), GIB), 4096, patient=False)
    assert info.value.reason == "models_busy" and "a:latest" in info.value.message
    assert unloaded == []


async def test_a_request_that_joins_a_refused_pre_warm_waits_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    guard, unloaded = _guard(None)
    guard.max_loaded = 1
    models = _models(FakeGpu(0, 0), {"a:latest": GIB})
    models.in_flight["a:latest"] = 1
    sent: list[object] = []

    async def call_json(method: str, path: str, body: object = None, *, within: float = 30.0) -> tuple[int, object]:
        if method == "GET":
            return 503, None  # /api/ps: the table stays as the test sets it
        sent.append(body)
        return 200, {}

    monkeypatch.setattr(models.backend, "call_json", call_json)
    loader = Loader(keep_alive="30m", load_timeout=5, before_load=guard.before_load)
    b = ModelInfo("b:latest", 8192, ("completion",), GIB)
    prewarm = asyncio.ensure_future(loader.ensure_loaded(models, b, 4096, wait_limit=5, patient=False))
    request = asyncio.ensure_future(loader.ensure_loaded(models, b, 4096, wait_limit=5))
    with pytest.raises(GatewayError):
        await prewarm
    await asyncio.sleep(0.2)
    assert not request.done() and sent == []
    del models.in_flight["a:latest"]
    await asyncio.wait_for(request, 2)
    assert unloaded == ["a:latest"]
    assert [body["model"] for body in sent if isinstance(body, dict)] == ["b:latest"]


async def test_a_refusal_states_sizes_in_units_that_show_them() -> None:
    guard, _ = _guard(None, budget=200 * 2**10)
    models = _models(FakeGpu(0, 0), {})
    with pytest.raises(GatewayError) as info:
        await guard.before_load(models, ModelInfo("small:latest", 8192, ("completion",), 250_000), 4096)
    assert "(268.6 KiB needed, 200.0 KiB free)" in info.value.message


def test_memory_held_with_nothing_loaded_counts_as_reserved() -> None:
    gpu = FakeGpu(80 * GIB, int(1.24 * GIB))  # driver reservation plus a CUDA context, as on an H100
    guard, _ = _guard(gpu)
    models = _models(gpu, {})
    guard.calibrate(models)
    assert guard.reserved_for(models) == int(1.24 * GIB)
    gpu.models["a"] = 10 * GIB
    models.loaded["a"] = Loaded("a", 4096, 10 * GIB, 10 * GIB, time.time() + 60)
    assert guard.fragmentation(models) == pytest.approx(0.0)


def _backend(gpu: FakeGpu, name: str, loaded: dict[str, int]) -> BackendModels:
    models = BackendModels(_upstream(name))
    for model, size in loaded.items():
        models.loaded[model] = Loaded(model, 4096, size, size, time.time() + 600)
        gpu.models[f"{name}/{model}"] = size
    return models


def _shared_guard(gpu: FakeGpu, *backends: BackendModels) -> tuple[VramGuard, list[str]]:
    unloaded: list[str] = []

    def unload(models: BackendModels, name: str) -> None:
        unloaded.append(f"{models.backend.name}/{name}")
        models.loaded.pop(name)
        gpu.models.pop(f"{models.backend.name}/{name}")

    guard = VramGuard(budget=None, margin=0.1, reserved=GIB // 2, source=gpu, unload=unload, settle=0.2)
    guard.peers = lambda models: backends
    return guard, unloaded


async def test_servers_sharing_a_gpu_make_room_with_each_others_idle_models() -> None:
    gpu = FakeGpu(40 * GIB, GIB // 2)
    one = _backend(gpu, "one", {"a:latest": 20 * GIB})
    two = _backend(gpu, "two", {})
    guard, unloaded = _shared_guard(gpu, one, two)
    await guard.before_load(two, ModelInfo("b:latest", 8192, ("completion",), 25 * GIB), 4096)
    assert unloaded == ["one/a:latest"]  # server two alone could not see what holds the memory
    assert guard.history[-1]["evicted"] == ["one/a:latest"]


async def test_a_busy_model_of_a_server_sharing_the_gpu_is_waited_for_never_evicted() -> None:
    gpu = FakeGpu(40 * GIB, GIB // 2)
    one = _backend(gpu, "one", {"a:latest": 30 * GIB})
    two = _backend(gpu, "two", {})
    one.in_flight["a:latest"] = 1
    guard, unloaded = _shared_guard(gpu, one, two)
    load = asyncio.ensure_future(guard.before_load(two, ModelInfo("b:latest", 8192, ("completion",), 12 * GIB), 4096))
    await asyncio.sleep(0.2)
    assert not load.done() and unloaded == []
    del one.in_flight["a:latest"]
    await asyncio.wait_for(load, 1)
    assert unloaded == ["one/a:latest"]


async def test_the_loaded_model_limit_of_one_server_evicts_only_its_own_models() -> None:
    gpu = FakeGpu(80 * GIB, GIB // 2)
    one = _backend(gpu, "one", {"a:latest": GIB})
    two = _backend(gpu, "two", {"x:latest": GIB})
    guard, unloaded = _shared_guard(gpu, one, two)
    guard.max_loaded = 1
    await guard.before_load(two, ModelInfo("y:latest", 8192, ("completion",), GIB), 4096)
    assert unloaded == ["two/x:latest"]  # OLLAMA_MAX_LOADED_MODELS is per server


def test_backends_on_this_hosts_gpus_share_one_memory_domain_and_take_turns_to_load() -> None:
    from ollama_asgi.backend import Backend
    from ollama_asgi.inference import ModelLifecycle
    from ollama_asgi.settings import Settings

    settings = Settings(upstreams=("http://127.0.0.1:9", "http://127.0.0.1:10"))
    upstreams = [Backend.from_spec(spec, settings) for spec in settings.backends]
    with_gpu = ModelLifecycle(settings, upstreams, vram_source=FakeGpu(80 * GIB, 0))
    one, two = with_gpu.models.values()
    assert list(with_gpu.guard.peers(one)) == [one, two]
    assert upstreams[0].memory.domain is upstreams[1].memory.domain
    assert with_gpu.loader.domain_lock(one) is with_gpu.loader.domain_lock(two)
    without = ModelLifecycle(settings, upstreams)  # no GPU reading: each server's memory is its own
    one, two = without.models.values()
    assert list(without.guard.peers(one)) == [one]
    assert without.loader.domain_lock(one) is not without.loader.domain_lock(two)


def _lifecycle(*entries: dict[str, object], gpu: FakeGpu | None = None) -> ModelLifecycle:
    settings = Settings.from_mapping({"upstreams": list(entries)})
    return ModelLifecycle(settings, [Backend.from_spec(spec, settings) for spec in settings.backends], vram_source=gpu)


def test_a_remote_backend_is_never_managed_on_this_hosts_gpus() -> None:
    gpu = FakeGpu(80 * GIB, 0)
    lifecycle = _lifecycle(
        {"url": "http://127.0.0.1:9", "name": "here"},
        {"url": "http://10.9.8.7:11434", "name": "there", "vram_budget": 8 * GIB},
        gpu=gpu,
    )
    guard = lifecycle.guard
    here, there = lifecycle.models["here"], lifecycle.models["there"]
    assert guard.free_bytes(here) == 80 * GIB
    assert guard.free_bytes(there) == 8 * GIB  # its own budget, not this host's free memory
    assert guard.fragmentation(there) is None
    assert lifecycle.backends[0].memory.domain is not lifecycle.backends[1].memory.domain


def test_a_backend_told_its_gpus_is_managed_on_them_wherever_its_url_points() -> None:
    lifecycle = _lifecycle({"url": "http://10.9.8.7:11434", "name": "there", "gpus": [0]}, gpu=FakeGpu(80 * GIB, 0))
    assert lifecycle.guard.free_bytes(lifecycle.models["there"]) == 80 * GIB


def test_calibrating_one_set_of_gpus_leaves_the_reserve_of_another_as_it_was() -> None:
    busy, clean = FakeGpu(80 * GIB, 2 * GIB), FakeGpu(80 * GIB, 0)
    guard, _ = _guard(None)
    one = _backend(busy, "one", {})
    two = _backend(clean, "two", {})
    memories = {
        "one": BackendMemory(one, domain=MemoryDomain(busy)),
        "two": BackendMemory(two, domain=MemoryDomain(clean)),
    }
    guard.memory_of = lambda models: memories[models.backend.name]
    guard.calibrate(one)
    guard.calibrate(two)
    assert guard.reserved_for(one) == 2 * GIB
    assert guard.reserved_for(two) == GIB // 2  # the configured reserve


async def test_a_runners_own_memory_beyond_its_size_vram_counts_in_the_next_load() -> None:
    gpu = FakeGpu(32 * GIB, GIB // 2)
    guard, unloaded = _guard(gpu)
    models = _models(gpu, {"big:latest": 25 * GIB})
    gpu.models["big:latest"] += GIB // 2  # its CUDA context, which /api/ps does not report
    # 6 GiB are free: the file's 5.2 GiB and the margin fit, but not with the new runner's own context.
    await guard.before_load(models, ModelInfo("small:latest", 8192, ("completion",), int(5.2 * GIB)), 4096)
    assert unloaded == ["big:latest"]


def test_a_model_seen_loaded_is_expected_at_its_size_vram_not_its_file_size() -> None:
    gpu = FakeGpu(80 * GIB, GIB // 2)
    guard, _ = _guard(gpu)
    models = _models(gpu, {})
    models.loaded["m:latest"] = Loaded("m:latest", 4096, 6 * GIB, 6 * GIB, time.time() + 600)
    gpu.models["m:latest"] = 6 * GIB
    guard.observe(models)
    del models.loaded["m:latest"], gpu.models["m:latest"]
    info = ModelInfo("m:latest", 8192, ("completion",), 4 * GIB)
    assert guard.expected_size(models, info, 4096) == 6 * GIB  # its KV cache and graph, seen
    assert guard.expected_size(models, info, 8192) == int(4 * GIB * 1.1)  # another context: not seen


def test_a_backend_added_on_this_hosts_gpus_joins_their_domain_and_leaves_it_when_removed() -> None:
    lifecycle = _lifecycle({"url": "http://127.0.0.1:9", "name": "one"}, gpu=FakeGpu(80 * GIB, 0))
    settings = Settings.from_mapping({"upstreams": [{"url": "http://127.0.0.1:10", "name": "two"}]})
    (one,), two = lifecycle.backends, Backend.from_spec(settings.backends[0], settings)
    lifecycle.add_backend(two)
    assert two.memory.domain is one.memory.domain  # their loads take turns under one lock
    assert list(lifecycle.guard.peers(one.models)) == [one.models, two.models]
    lifecycle.remove_backend("two")
    assert list(lifecycle.guard.peers(one.models)) == [one.models]  # its idle models make no room here any more
