"""GPU-backed model memory for the emulator: loads read real weights into real device memory.

With ``EmulatorServer(gpu=True)`` or ``ollama-asgi emulate --gpu`` the emulator's scheduler hands
every load, token and unload to a :class:`GpuBackend`:

- a load allocates the model's whole memory on the CUDA device (what ``/api/ps`` reports as
  ``size_vram``: weights plus KV cache) and fills the weights part from a file on local disk,
  chunk by chunk through a host staging buffer (pinned by default), so the load takes what the
  disk or page cache and the PCIe link take;
- each generated token multiplies a vector by a square slice of the weights on the device;
- an unload frees the memory and hands it back to the driver, so NVML sees it go.

The weights come from one file under ``weights_dir`` (``$OLLAMA_ASGI_WEIGHTS_DIR``, default
``~/.cache/ollama-asgi/weights``), written once with random bytes and grown when a larger model
needs it; every model reads its first ``size`` bytes, so a trace of many large models needs disk
for the largest one only. ``cold_cache=True`` drops the file from the page cache before each
load, for disk-bound load times.

PyTorch with CUDA is an optional dependency, imported only here and only when the GPU mode is
asked for; without it :class:`GpuUnavailable` says what is missing. ``simulate_bytes`` swaps the
device for :class:`SimulatedDevice` (memory accounting and real file reads, no CUDA), which the
tests and the benchmark's dry run use on machines without a GPU.

The CPU emulator's modelled load time is ``load_base_seconds + size / load_bytes_per_second``;
:func:`fit_load_profile` fits those two numbers to measured loads, and ``LOAD_PROFILE_H100`` /
``LOAD_PROFILE_H100_COLD`` hold the values measured on an H100 (see BENCHMARKS.md, "GPU").

One concern, one module, long: the device (CUDA or simulated), its allocations and the staged
copies are the whole of what a GPU adds to the emulator, and they share their bookkeeping.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import os
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ollama_asgi.testing.wire import ApiError, human_bytes

if TYPE_CHECKING:
    from ollama_asgi.testing.emulator import OllamaEmulator
    from ollama_asgi.vram import DeviceMemory

__all__ = [
    "LOAD_PROFILE_H100",
    "LOAD_PROFILE_H100_COLD",
    "Allocation",
    "GpuBackend",
    "GpuOptions",
    "GpuOutOfMemory",
    "GpuUnavailable",
    "LoadProfile",
    "LoadRecord",
    "SimulatedDevice",
    "WeightsFile",
    "attach_gpu",
    "default_weights_dir",
    "fit_load_profile",
]

MIB = 2**20
GIB = 2**30
OOM_MESSAGE = "llama runner process has terminated: cudaMalloc failed: out of memory"


# -- the load-time model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """Load time as ``base_seconds + size / bytes_per_second``: the CPU emulator's model of a load."""

    base_seconds: float
    bytes_per_second: float
    source: str = ""

    def seconds(self, size: int) -> float:
        return self.base_seconds + size / self.bytes_per_second

    def emulator_kwargs(self) -> dict[str, float]:
        """Keyword arguments for ``OllamaEmulator``/``EmulatorServer``: ``EmulatorServer(**p.emulator_kwargs())``."""
        return {"load_base_seconds": self.base_seconds, "load_bytes_per_second": self.bytes_per_second}


def fit_load_profile(samples: Iterable[tuple[int, float]], source: str = "") -> LoadProfile:
    """Least-squares fit of ``seconds = base + size / rate`` to ``(size_bytes, seconds)`` samples.

    With a single distinct size (or a fit that would give a negative base) the base is 0 and the
    rate is total bytes over total seconds.
    """
    points = [(float(size), float(seconds)) for size, seconds in samples if size > 0 and seconds > 0]
    if not points:
        raise ValueError("no load samples to fit")
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx > 0:
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
        base = mean_y - slope * mean_x
        if slope > 0 and base >= 0:
            return LoadProfile(round(base, 4), float(f"{1.0 / slope:.4g}"), source)
    rate = sum(x for x, _ in points) / sum(y for _, y in points)
    return LoadProfile(0.0, float(f"{rate:.4g}"), source)


# Measured with bench/gpu/run.py on an NVIDIA H100 80GB HBM3 (driver 580.159.04, CUDA 13.0, PyTorch 2.11),
# two runs, least squares over every load: weights file -> 64 MiB pinned staging buffers -> device.
# Warm: 89 loads of 1-17.9 GiB with the file in the page cache (4.2-6.9 GB/s each, median 5.07).
# Cold: 7 loads of 2-16 GiB with the file dropped from the page cache (1.41-1.55 GB/s each).
# Neither includes starting a runner process; a fresh CUDA context took a further 0.17 s there.
# Figures and plots: BENCHMARKS.md, section "GPU".
LOAD_PROFILE_H100 = LoadProfile(
    base_seconds=0.01,
    bytes_per_second=5.0e9,
    source="H100 80GB HBM3, weights in the page cache (warm); bench/gpu/run.py, BENCHMARKS.md 'GPU'",
)
LOAD_PROFILE_H100_COLD = LoadProfile(
    base_seconds=0.18,
    bytes_per_second=1.57e9,
    source="H100 80GB HBM3, weights read from local disk (page cache dropped); bench/gpu/run.py",
)


# -- errors -------------------------------------------------------------------------------------------


class GpuUnavailable(RuntimeError):
    """The GPU mode was asked for but PyTorch or a CUDA device is missing."""


class GpuOutOfMemory(RuntimeError):
    """The device could not allocate a model's memory."""


# -- the weights file ---------------------------------------------------------------------------------


def default_weights_dir() -> Path:
    env = os.environ.get("OLLAMA_ASGI_WEIGHTS_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ollama-asgi" / "weights"


class WeightsFile:
    """One file of random bytes that every model's weights are read from (its first ``size`` bytes)."""

    BLOCK = 64 * MIB

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "weights.bin"
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def ensure(self, size: int) -> float:
        """Grow the file to at least ``size`` bytes (real blocks, not a sparse hole); seconds spent."""
        with self._lock:
            have = self.size
            if have >= size:
                return 0.0
            started = time.perf_counter()
            self.directory.mkdir(parents=True, exist_ok=True)
            block = os.urandom(self.BLOCK)
            with open(self.path, "ab") as handle:
                while have < size:
                    n = min(self.BLOCK, size - have)
                    handle.write(block[:n] if n < self.BLOCK else block)
                    have += n
                handle.flush()
                os.fsync(handle.fileno())
            return time.perf_counter() - started

    def drop_cache(self) -> None:
        """Ask the kernel to forget the file's cached pages, so the next read comes from disk."""
        if not hasattr(os, "posix_fadvise") or not self.path.exists():
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_full(handle: Any, view: memoryview) -> int:
    """``readinto`` until ``view`` is full or the file ends; bytes read."""
    done = 0
    while done < len(view):
        n = handle.readinto(view[done:])
        if not n:
            break
        done += n
    return done


# -- devices ------------------------------------------------------------------------------------------


class Device(Protocol):
    """What :class:`GpuBackend` needs from a device."""

    name: str

    def allocate(self, nbytes: int) -> Any: ...

    def fill(self, buffer: Any, path: Path, nbytes: int, chunk: int, pinned: bool) -> None: ...

    def step(self, buffer: Any) -> None: ...

    def free(self, buffer: Any) -> None: ...

    def trim(self) -> None: ...

    def memory(self) -> tuple[int, int]: ...

    def describe(self) -> dict[str, str]: ...


class SimulatedDevice:
    """A device of ``total`` bytes without CUDA: allocations are counted, weights are really read.

    Its :meth:`read` makes it a VRAM source for the gateway's guard (``VramSource``), standing in for
    NVML in dry runs and tests.
    """

    def __init__(self, total: int, *, context: int = 0, index: int = 0) -> None:
        if total <= 0:
            raise ValueError("a simulated device needs a positive size")
        self.name = f"simulated device ({human_bytes(total)})"
        self.total = total
        self.context = context  # memory no model accounts for, like a CUDA context
        self.index = index
        self.allocated = 0
        self._lock = threading.Lock()

    def allocate(self, nbytes: int) -> Any:
        with self._lock:
            if self.context + self.allocated + nbytes > self.total:
                raise GpuOutOfMemory(
                    f"cannot allocate {human_bytes(nbytes)}: {human_bytes(self.total - self.context - self.allocated)} free"
                )
            self.allocated += nbytes
        return [nbytes]

    def fill(self, buffer: Any, path: Path, nbytes: int, chunk: int, pinned: bool) -> None:
        staging = memoryview(bytearray(min(chunk, max(nbytes, 1))))
        with open(path, "rb", buffering=0) as handle:
            left = nbytes
            while left > 0:
                n = _read_full(handle, staging[: min(len(staging), left)])
                if n == 0:
                    raise OSError(f"{path} ends {human_bytes(left)} short of the weights")
                left -= n

    def step(self, buffer: Any) -> None:
        return None

    def free(self, buffer: Any) -> None:
        with self._lock:
            if buffer and buffer[0]:
                self.allocated -= buffer[0]
                buffer[0] = 0

    def trim(self) -> None:
        return None

    def memory(self) -> tuple[int, int]:
        return self.context + self.allocated, self.total

    def read(self) -> list[DeviceMemory]:
        from ollama_asgi.vram import DeviceMemory

        used, total = self.memory()
        return [DeviceMemory(index=self.index, total=total, used=used)]

    def describe(self) -> dict[str, str]:
        return {"device": self.name, "backend": "simulated"}


def _import_torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise GpuUnavailable(
            "the GPU emulator needs PyTorch with CUDA (pip install torch), and torch is not installed"
        ) from exc


class TorchDevice:
    """A CUDA device through PyTorch: ``cudaMalloc`` per model, chunked host-to-device weight copies."""

    def __init__(self, index: int = 0, token_dim: int = 4096) -> None:
        torch = _import_torch()
        if not torch.cuda.is_available():
            raise GpuUnavailable(
                f"the GPU emulator needs a CUDA device, and PyTorch {torch.__version__} sees none "
                f"(built for CUDA {torch.version.cuda or 'none'}; is an NVIDIA driver and GPU present?)"
            )
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise GpuUnavailable(f"CUDA device {index} does not exist ({count} device(s) present)")
        self._torch = torch
        self.index = index
        self.device = torch.device("cuda", index)
        self.name = str(torch.cuda.get_device_name(index))
        self.token_dim = token_dim
        with torch.cuda.device(index):
            self._copy_stream = torch.cuda.Stream(device=self.device)
            self._x = torch.randn(1, token_dim, device=self.device, dtype=torch.bfloat16)
        self._staging: dict[tuple[int, bool], list[Any]] = {}
        # Tokens are computed on one thread: cuBLAS keeps a handle and workspace per thread, and this
        # way they are made once, now, and belong to the context like the rest of its fixed memory.
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cuda{index}-tokens")
        self._compute.submit(self._warm_up).result()

    def _warm_up(self) -> None:
        torch = self._torch
        with torch.cuda.device(self.index):
            (self._x @ torch.randn(self.token_dim, 16, device=self.device, dtype=torch.bfloat16)).sum().item()
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    # allocation

    def allocate(self, nbytes: int) -> Any:
        torch = self._torch
        try:
            return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=self.device)
        except torch.cuda.OutOfMemoryError as exc:
            free, _ = torch.cuda.mem_get_info(self.device)
            raise GpuOutOfMemory(f"cannot allocate {human_bytes(nbytes)}: {human_bytes(free)} free") from exc

    def free(self, buffer: Any) -> None:
        return None  # the tensor dies with its last reference; trim() returns the memory to the driver

    def trim(self) -> None:
        with self._torch.cuda.device(self.index):
            self._torch.cuda.empty_cache()  # hand freed blocks back to the driver, where NVML sees them

    # weights

    def _buffers(self, chunk: int, pinned: bool) -> list[Any]:
        key = (chunk, pinned)
        if key not in self._staging:
            torch = self._torch
            self._staging[key] = [torch.empty(chunk, dtype=torch.uint8, pin_memory=pinned) for _ in range(2)]
        return self._staging[key]

    def fill(self, buffer: Any, path: Path, nbytes: int, chunk: int, pinned: bool) -> None:
        """File -> host staging buffer -> device, double-buffered so disk and copy overlap."""
        torch = self._torch
        staging = self._buffers(chunk, pinned)
        views = [memoryview((ctypes.c_char * chunk).from_address(t.data_ptr())).cast("B") for t in staging]
        pending: list[Any] = [None, None]
        offset = 0
        with open(path, "rb", buffering=0) as handle, torch.cuda.device(self.index):
            while offset < nbytes:
                slot = (offset // chunk) % 2
                if pending[slot] is not None:
                    pending[slot].synchronize()  # that staging buffer's previous copy is done
                n = _read_full(handle, views[slot][: min(chunk, nbytes - offset)])
                if n == 0:
                    raise OSError(f"{path} ends {human_bytes(nbytes - offset)} short of the weights")
                with torch.cuda.stream(self._copy_stream):
                    buffer[offset : offset + n].copy_(staging[slot][:n], non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(self._copy_stream)
                pending[slot] = event
                offset += n
            self._copy_stream.synchronize()

    def copy_bandwidth(self, nbytes: int, pinned: bool, repeats: int = 3) -> float:
        """Host-to-device bytes per second for one ``nbytes`` copy (best of ``repeats``)."""
        torch = self._torch
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
        host.fill_(7)
        device = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        best = float("inf")
        with torch.cuda.device(self.index):
            for _ in range(repeats + 1):
                torch.cuda.synchronize(self.device)
                started = time.perf_counter()
                device.copy_(host, non_blocking=pinned)
                torch.cuda.synchronize(self.device)
                best = min(best, time.perf_counter() - started)
        del device, host
        self.trim()
        return nbytes / best

    # tokens

    def step(self, buffer: Any) -> None:
        self._compute.submit(self._product, buffer).result()

    def _product(self, buffer: Any) -> None:
        torch = self._torch
        dim = self.token_dim
        while dim > 16 and dim * dim * 2 > buffer.numel():
            dim //= 2
        if dim * dim * 2 > buffer.numel():
            return
        weights = buffer[: dim * dim * 2].view(torch.bfloat16).view(dim, dim)
        with torch.cuda.device(self.index):
            out = self._x[:, :dim] @ weights
            out.sum().item()  # wait for the product, as a runner waits for its logits

    # readings

    def memory(self) -> tuple[int, int]:
        free, total = self._torch.cuda.mem_get_info(self.device)
        return int(total - free), int(total)

    def describe(self) -> dict[str, str]:
        torch = self._torch
        props = torch.cuda.get_device_properties(self.index)
        facts = {
            "device": self.name,
            "backend": "torch",
            "torch": str(torch.__version__),
            "cuda": str(torch.version.cuda),
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": str(props.multi_processor_count),
            "total_memory": str(int(props.total_memory)),
        }
        try:
            pynvml = importlib.import_module("pynvml")
            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            facts["driver"] = driver.decode() if isinstance(driver, bytes) else str(driver)
        except Exception:
            pass
        return facts


# -- the backend the scheduler calls ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuOptions:
    """How the GPU emulator uses its device.

    ``simulate_bytes`` replaces CUDA with a :class:`SimulatedDevice` of that size (CPU hosts).
    """

    device: int = 0
    weights_dir: Path | None = None
    chunk_bytes: int = 64 * MIB
    pinned: bool = True
    cold_cache: bool = False
    token_dim: int = 4096
    simulate_bytes: int | None = None
    simulate_context: int = 512 * MIB


@dataclass(slots=True)
class LoadRecord:
    """One load as the device saw it."""

    key: str
    size: int
    memory: int
    seconds: float  # allocation + weights read and copied
    prepare_seconds: float  # growing the weights file first (not part of a real load)
    cold: bool
    ok: bool
    error: str = ""
    started: float = 0.0  # time.time()


@dataclass(eq=False, slots=True)
class Allocation:
    """A model's memory on the device; freed exactly once."""

    key: str
    size: int
    memory: int
    buffer: Any
    record: LoadRecord
    freed: bool = False


@dataclass(slots=True)
class _Counters:
    loads: int = 0
    unloads: int = 0
    out_of_memory: int = 0
    failures: int = 0
    tokens: int = 0
    records: list[LoadRecord] = field(default_factory=list)


class GpuBackend:
    """Model memory on a CUDA device (or a simulated one) for the emulator's scheduler."""

    def __init__(self, options: GpuOptions | None = None, *, device: Device | None = None) -> None:
        self.options = options or GpuOptions()
        if device is None:
            if self.options.simulate_bytes:
                device = SimulatedDevice(self.options.simulate_bytes, context=self.options.simulate_context)
            else:
                device = TorchDevice(self.options.device, self.options.token_dim)
        self.device: Device = device
        self.weights = WeightsFile(self.options.weights_dir or default_weights_dir())
        self.stats = _Counters()
        self.resident: set[Allocation] = set()
        self._lock = threading.Lock()

    @property
    def records(self) -> list[LoadRecord]:
        return self.stats.records

    def describe(self) -> dict[str, str]:
        return {**self.device.describe(), "weights": str(self.weights.path), "pinned": str(self.options.pinned)}

    def memory(self) -> tuple[int, int]:
        """``(used, total)`` bytes as the driver reports them (NVML's view, all processes)."""
        return self.device.memory()

    # loads

    def load_sync(self, key: str, size: int, memory: int, *, cold: bool | None = None) -> Allocation:
        """Allocate ``memory`` bytes and fill the first ``size`` from the weights file (blocking)."""
        cold = self.options.cold_cache if cold is None else cold
        prepare = self.weights.ensure(size)
        if cold:
            self.weights.drop_cache()
        started_at = time.time()
        started = time.perf_counter()
        record = LoadRecord(key, size, memory, 0.0, prepare, cold, ok=False, started=started_at)
        try:
            allocation = Allocation(key, size, memory, self.device.allocate(memory), record)
        except GpuOutOfMemory as exc:
            record.seconds, record.error = time.perf_counter() - started, str(exc)
            with self._lock:
                self.stats.out_of_memory += 1
                self.stats.failures += 1
                self.stats.records.append(record)
            raise
        try:
            if size:
                weights = min(size, memory)
                self.device.fill(
                    allocation.buffer, self.weights.path, weights, self.options.chunk_bytes, self.options.pinned
                )
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)  # their locals hold the device buffer
            self._free(allocation)
            record.seconds, record.error = time.perf_counter() - started, str(exc) or type(exc).__name__
            with self._lock:
                self.stats.failures += 1
                self.stats.records.append(record)
            raise
        record.seconds, record.ok = time.perf_counter() - started, True
        with self._lock:
            self.stats.loads += 1
            self.stats.records.append(record)
            self.resident.add(allocation)
        return allocation

    async def load(self, key: str, size: int, memory: int) -> Allocation:
        """:meth:`load_sync` in a worker thread; a cancelled load is freed once its copy ends."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self.load_sync, key, size, memory)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._discard_cancelled)
            raise
        except GpuOutOfMemory as exc:
            raise ApiError(500, f"{OOM_MESSAGE} ({exc})") from exc
        except OSError as exc:
            raise ApiError(500, f"llama runner process has terminated: error loading model: {exc}") from exc
        except Exception as exc:  # a CUDA error: the runner would have died with it
            raise ApiError(500, f"llama runner process has terminated: {exc}") from exc

    def _discard_cancelled(self, future: asyncio.Future[Allocation]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.release(future.result())

    # tokens and unloads

    def step(self, allocation: Allocation) -> None:
        """One token's computation on the model's weights."""
        if not allocation.freed:
            self.device.step(allocation.buffer)
            self.stats.tokens += 1

    def release(self, allocation: Allocation) -> None:
        """Free the model's memory (idempotent)."""
        with self._lock:
            if allocation.freed:
                return
            self.resident.discard(allocation)
            self.stats.unloads += 1
        self._free(allocation)

    def _free(self, allocation: Allocation) -> None:
        allocation.freed = True
        buffer, allocation.buffer = allocation.buffer, None
        self.device.free(buffer)
        del buffer  # the last reference: the device memory is unused from here
        self.device.trim()

    def release_all(self) -> None:
        for allocation in list(self.resident):
            self.release(allocation)


def attach_gpu(
    emulator: OllamaEmulator, gpu: bool | GpuOptions | GpuBackend, *, vram_bytes: int | None = None
) -> GpuBackend:
    """Give ``emulator``'s scheduler a GPU backend; its memory budget becomes the device's free memory.

    ``vram_bytes`` overrides that budget (e.g. larger than the card, so that only a gateway's guard
    stands between a trace and an out-of-memory failure).
    """
    backend = gpu if isinstance(gpu, GpuBackend) else GpuBackend(gpu if isinstance(gpu, GpuOptions) else None)
    emulator.scheduler.device = backend
    if vram_bytes is None:
        used, total = backend.memory()
        vram_bytes = total - used
    emulator.vram_bytes = vram_bytes
    return backend


def describe_samples(samples: Sequence[tuple[int, float]]) -> str:
    """``n loads, a-b GiB, c GB/s mean`` for logs."""
    if not samples:
        return "no loads"
    sizes = [s for s, _ in samples]
    rate = sum(sizes) / sum(t for _, t in samples)
    return f"{len(samples)} loads, {min(sizes) / GIB:.1f}-{max(sizes) / GIB:.1f} GiB, {rate / 1e9:.2f} GB/s mean"
