"""The GPU emulator on a real CUDA device (run by bench/gpu/run.sh on the GPU machine; deselected elsewhere).

Memory is checked through NVML, as the gateway's guard reads it: a load must show up there with the
size ``/api/ps`` reports, an unload must give it back, and an allocation that cannot fit must be an
out-of-memory error that leaves the device as it was.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ollama_asgi.testing import EmulatedModel, EmulatorServer
from ollama_asgi.testing.gpu import GpuBackend, GpuOptions, GpuOutOfMemory, TorchDevice
from ollama_asgi.vram import NvmlSource

pytestmark = pytest.mark.gpu

MIB = 2**20
GIB = 2**30
SLACK = 64 * MIB  # allocator rounding and NVML granularity


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> GpuBackend:
    pytest.importorskip("torch", reason="the GPU emulator runs on PyTorch")
    return GpuBackend(GpuOptions(weights_dir=tmp_path_factory.mktemp("weights")))


@pytest.fixture(scope="module")
def nvml() -> NvmlSource:
    source = NvmlSource.available([0])
    assert source is not None, "NVML must be readable on the GPU machine (nvidia-ml-py)"
    return source


def used(nvml: NvmlSource) -> int:
    return nvml.read()[0].used


def test_a_load_allocates_its_memory_and_an_unload_returns_it(backend: GpuBackend, nvml: NvmlSource) -> None:
    assert isinstance(backend.device, TorchDevice)
    before = used(nvml)
    allocation = backend.load_sync("t", 512 * MIB, 768 * MIB)
    assert abs(used(nvml) - before - 768 * MIB) < SLACK
    assert allocation.record.ok and allocation.record.seconds > 0
    backend.step(allocation)  # a real product on the weights
    backend.release(allocation)
    assert abs(used(nvml) - before) < SLACK


def test_the_weights_reach_the_device_intact(backend: GpuBackend) -> None:
    allocation = backend.load_sync("check", 96 * MIB, 96 * MIB)
    try:
        on_device = bytes(allocation.buffer[: 8 * MIB].cpu().numpy().tobytes())
        with open(backend.weights.path, "rb") as handle:
            assert on_device == handle.read(8 * MIB)
        tail = bytes(allocation.buffer[90 * MIB : 96 * MIB].cpu().numpy().tobytes())
        with open(backend.weights.path, "rb") as handle:
            handle.seek(90 * MIB)
            assert tail == handle.read(6 * MIB)
    finally:
        backend.release(allocation)


def test_an_allocation_beyond_the_card_fails_cleanly(backend: GpuBackend, nvml: NvmlSource) -> None:
    before = used(nvml)
    total = nvml.read()[0].total
    failures = backend.stats.out_of_memory
    with pytest.raises(GpuOutOfMemory):
        backend.load_sync("too-big", GIB, total + GIB)
    assert backend.stats.out_of_memory == failures + 1
    assert abs(used(nvml) - before) < SLACK


def test_the_emulator_serves_from_the_gpu_and_ps_matches_nvml(backend: GpuBackend, nvml: NvmlSource) -> None:
    models = [EmulatedModel(name="gpu-small", size=256 * MIB, embedding_length=1024)]
    before = used(nvml)
    with EmulatorServer(models=models, gpu=backend) as server:
        body = {"model": "gpu-small", "prompt": "hello there", "stream": False, "options": {"num_predict": 6}}
        tokens = backend.stats.tokens
        response = httpx.post(f"{server.url}/api/generate", json=body, timeout=60)
        assert response.status_code == 200, response.text
        (ps,) = httpx.get(f"{server.url}/api/ps").json()["models"]
        assert abs(used(nvml) - before - ps["size_vram"]) < SLACK
        assert backend.stats.tokens - tokens == 6
        unload = {"model": "gpu-small", "prompt": "", "keep_alive": 0}
        assert httpx.post(f"{server.url}/api/generate", json=unload, timeout=60).json()["done_reason"] == "unload"
    assert not backend.resident
    assert abs(used(nvml) - before) < SLACK


def test_the_cli_attaches_the_device(tmp_path: Path) -> None:
    import argparse

    pytest.importorskip("torch", reason="the GPU emulator runs on PyTorch")

    from ollama_asgi.testing.cli import add_emulate_arguments, build_emulator

    parser = argparse.ArgumentParser()
    add_emulate_arguments(parser)
    emulator = build_emulator(parser.parse_args(["--gpu", "--weights-dir", str(tmp_path)]))
    device = emulator.scheduler.device
    assert isinstance(device, GpuBackend)
    used_now, total = device.memory()
    assert abs(emulator.vram_bytes - (total - used_now)) < SLACK
