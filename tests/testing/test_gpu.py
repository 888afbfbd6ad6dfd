"""The GPU mode's plumbing on a CPU host: clear errors without CUDA, a simulated device, the load model.

The same paths on a real GPU are exercised by tests/bench/gpu (marked ``gpu``) and bench/gpu/run.py.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollama_asgi.testing import EmulatedModel, EmulatorServer
from ollama_asgi.testing.cli import add_emulate_arguments, build_emulator
from ollama_asgi.testing.gpu import (
    LOAD_PROFILE_H100,
    LOAD_PROFILE_H100_COLD,
    GpuBackend,
    GpuOptions,
    GpuOutOfMemory,
    GpuUnavailable,
    LoadProfile,
    SimulatedDevice,
    WeightsFile,
    fit_load_profile,
)

from .conftest import wait_for

MIB = 2**20
GIB = 2**30
MODELS = (
    EmulatedModel(name="small", size=8 * MIB, embedding_length=64),
    EmulatedModel(name="medium", size=24 * MIB, embedding_length=64),
    EmulatedModel(name="huge", size=200 * MIB),
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_emulate_arguments(parser)
    return parser.parse_args(list(argv))


def simulated(tmp_path: Path, total: int = 64 * MIB) -> GpuOptions:
    return GpuOptions(weights_dir=tmp_path, simulate_bytes=total, simulate_context=4 * MIB, chunk_bytes=MIB)


def generate(url: str, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "prompt": "one two three", "stream": False, **extra}
    return httpx.post(f"{url}/api/generate", json=body, timeout=10)


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError


# -- without CUDA the GPU mode says what is missing ------------------------------------------------------


@pytest.mark.usefixtures("no_torch")
def test_the_backend_names_pytorch_when_it_is_missing() -> None:
    with pytest.raises(GpuUnavailable, match=r"PyTorch with CUDA \(pip install torch\)"):
        GpuBackend()


@pytest.mark.usefixtures("no_torch")
def test_the_server_refuses_gpu_mode_before_starting() -> None:
    with pytest.raises(GpuUnavailable, match="torch is not installed"):
        EmulatorServer(gpu=True)


@pytest.mark.usefixtures("no_torch")
def test_the_cli_exits_with_the_reason() -> None:
    with pytest.raises(SystemExit, match=r"emulate --gpu: .*torch is not installed"):
        build_emulator(parse("--gpu"))


def test_torch_without_cuda_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    class Cuda:
        @staticmethod
        def is_available() -> bool:
            return False

    class Version:
        cuda = None

    class FakeTorch:
        __version__ = "2.0.0+cpu"
        cuda = Cuda
        version = Version

    monkeypatch.setitem(sys.modules, "torch", FakeTorch)
    with pytest.raises(GpuUnavailable, match=r"needs a CUDA device, and PyTorch 2.0.0\+cpu sees none"):
        GpuBackend()


# -- the load-time model ------------------------------------------------------------------------------------


def test_the_fit_recovers_base_and_rate() -> None:
    truth = LoadProfile(0.25, 5e9)
    samples = [(size, truth.seconds(size)) for size in (GIB, 4 * GIB, 8 * GIB, 16 * GIB)]
    fitted = fit_load_profile(samples, "synthetic")
    assert fitted.base_seconds == pytest.approx(0.25, abs=1e-3)
    assert fitted.bytes_per_second == pytest.approx(5e9, rel=1e-3)
    assert fitted.source == "synthetic"


def test_one_size_or_a_negative_intercept_falls_back_to_a_plain_rate() -> None:
    assert fit_load_profile([(GIB, 0.5), (GIB, 0.5)]) == LoadProfile(0.0, float(f"{GIB / 0.5:.4g}"))
    steep = fit_load_profile([(GIB, 0.1), (2 * GIB, 0.4)])  # the line would cross below zero
    assert steep.base_seconds == 0.0 and steep.bytes_per_second == pytest.approx(3 * GIB / 0.5, rel=1e-3)
    with pytest.raises(ValueError):
        fit_load_profile([])


def test_the_h100_profiles_drive_the_cpu_emulator() -> None:
    assert LOAD_PROFILE_H100.bytes_per_second > LOAD_PROFILE_H100_COLD.bytes_per_second
    with EmulatorServer(models=MODELS[:1], **LOAD_PROFILE_H100.emulator_kwargs()) as server:
        assert server.emulator.load_bytes_per_second == LOAD_PROFILE_H100.bytes_per_second
        assert server.emulator.load_base_seconds == LOAD_PROFILE_H100.base_seconds
    emulator = build_emulator(parse("--load-profile", "h100-cold"))
    assert emulator.load_bytes_per_second == LOAD_PROFILE_H100_COLD.bytes_per_second
    assert build_emulator(parse("--fast", "--load-profile", "h100")).load_bytes_per_second == math.inf
    assert build_emulator(parse()).vram_bytes == 24 * GIB


# -- the weights file ---------------------------------------------------------------------------------------


def test_the_weights_file_is_written_once_and_grown(tmp_path: Path) -> None:
    weights = WeightsFile(tmp_path / "w")
    assert weights.ensure(3 * MIB) > 0
    stat = weights.path.stat()
    assert stat.st_size == 3 * MIB and stat.st_blocks * 512 >= 3 * MIB  # real blocks, not a sparse hole
    assert weights.path.read_bytes()[:4096].count(0) < 512  # random bytes
    assert weights.ensure(2 * MIB) == 0.0
    weights.ensure(5 * MIB)
    assert weights.size == 5 * MIB
    weights.drop_cache()  # no error on any platform


# -- the emulator on a simulated device ----------------------------------------------------------------------


def test_loads_tokens_and_unloads_go_through_the_device(tmp_path: Path) -> None:
    with EmulatorServer(models=MODELS, gpu=simulated(tmp_path)) as server:
        backend = server.gpu
        assert backend is not None and isinstance(backend.device, SimulatedDevice)
        assert server.emulator.vram_bytes == 60 * MIB  # the device's free memory
        response = generate(server.url, "small", options={"num_predict": 5})
        assert response.status_code == 200
        (ps,) = httpx.get(f"{server.url}/api/ps").json()["models"]
        (allocation,) = backend.resident
        assert allocation.memory == ps["size_vram"] and allocation.size == 8 * MIB
        assert backend.memory()[0] == 4 * MIB + ps["size_vram"]
        assert backend.stats.tokens == 5 and backend.stats.loads == 1
        assert backend.records[0].ok and backend.records[0].seconds > 0
        assert backend.weights.size >= 8 * MIB
        assert generate(server.url, "small", keep_alive=0, prompt="").json()["done_reason"] == "unload"
        wait_for(lambda: not backend.resident)
        assert backend.memory()[0] == 4 * MIB and backend.stats.unloads == 1


def test_an_allocation_that_does_not_fit_is_an_out_of_memory_error(tmp_path: Path) -> None:
    with EmulatorServer(models=MODELS, gpu=simulated(tmp_path), vram_bytes=GIB) as server:
        backend = server.gpu
        assert backend is not None
        assert generate(server.url, "medium").status_code == 200
        response = generate(server.url, "huge")
        assert response.status_code == 500
        assert "cudaMalloc failed: out of memory" in response.json()["error"]
        assert [m["name"] for m in httpx.get(f"{server.url}/api/ps").json()["models"]] == ["medium:latest"]
        assert backend.stats.out_of_memory == 1 and not backend.records[-1].ok
        assert generate(server.url, "small").status_code == 200  # the emulator carries on


def test_a_load_abandoned_by_its_client_is_freed_when_the_copy_ends(tmp_path: Path) -> None:
    release = threading.Event()

    class SlowDevice(SimulatedDevice):
        def fill(self, buffer: Any, path: Path, nbytes: int, chunk: int, pinned: bool) -> None:
            release.wait(10)
            super().fill(buffer, path, nbytes, chunk, pinned)

    device = SlowDevice(64 * MIB)
    backend = GpuBackend(GpuOptions(weights_dir=tmp_path), device=device)
    with EmulatorServer(models=MODELS, gpu=backend) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/api/generate", json={"model": "small", "prompt": "hi"}, timeout=0.3)
        wait_for(lambda: server.emulator.stats.aborted_loads == 1)
        wait_for(lambda: device.allocated > 0, timeout=10)  # the copy goes on without its client
        release.set()
        wait_for(lambda: device.allocated == 0)
        assert not backend.resident and backend.stats.unloads == 1


def test_a_killed_emulator_frees_what_it_held(tmp_path: Path) -> None:
    server = EmulatorServer(models=MODELS, gpu=simulated(tmp_path)).start()
    try:
        assert generate(server.url, "small").status_code == 200
        assert server.gpu is not None and server.gpu.resident
        server.kill()
        assert not server.gpu.resident and server.gpu.memory()[0] == 4 * MIB
    finally:
        server.stop()


def test_the_simulated_device_is_a_vram_source() -> None:
    device = SimulatedDevice(GIB, context=MIB, index=3)
    buffer = device.allocate(10 * MIB)
    (reading,) = device.read()
    assert (reading.index, reading.total, reading.used) == (3, GIB, 11 * MIB)
    with pytest.raises(GpuOutOfMemory):
        device.allocate(GIB)
    device.free(buffer)
    device.free(buffer)  # twice is harmless
    assert device.read()[0].used == MIB


def test_the_cli_builds_a_gpu_emulator_on_a_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_attach(emulator: Any, options: GpuOptions, *, vram_bytes: int | None = None) -> None:
        seen.update(options=options, vram_bytes=vram_bytes)

    monkeypatch.setattr("ollama_asgi.testing.cli.attach_gpu", fake_attach)
    build_emulator(
        parse("--gpu", "--gpu-device", "1", "--weights-dir", str(tmp_path), "--cold-cache", "--vram-gb", "2")
    )
    options = seen["options"]
    assert (options.device, options.weights_dir, options.cold_cache) == (1, tmp_path, True)
    assert seen["vram_bytes"] == 2 * GIB
