"""The VRAM guard on a real GPU: NVML readings, evictions, out-of-memory failures and load times.

In one process this starts the GPU emulator (``EmulatorServer(gpu=...)``: loads really read a
weights file into CUDA memory) and the gateway in front of it, then cycles a trace of models whose
sizes add up to about twice the GPU's memory through the gateway, twice:

1. with the guard on (``nvml=True``, ``gpu_devices=[N]``, a ``vram_budget``): it must evict idle
   models before each load, so no allocation fails and memory never exceeds the budget;
2. with the guard off: the same trace must run the device out of memory.

The emulator's own scheduler is told the device is far larger than it is (``vram_bytes`` beyond
the card, ``max_loaded_models=64``), as when Ollama's estimate is wrong or another process shares
the card: nothing but the gateway's guard stands between the trace and ``cudaMalloc`` failing.

Before the traces it measures the NVML query cost, host-to-device copy bandwidth (pinned and
pageable) and loads of several sizes from a cold and a warm page cache, and fits the CPU
emulator's load-time model (``load_base_seconds + size / load_bytes_per_second``).

Per step it records NVML used/free after the step and the peak during it (a sampler polls NVML
every few milliseconds), what the guard evicted, the load time, and whether an allocation failed.
It writes ``trace.csv``, ``probes.csv``, ``summary.json``, ``memory.png`` and ``loads.png``.

    python bench/gpu/run.py --out results/             # on a CUDA host (see run.sh)
    python bench/gpu/run.py --simulate 6 --out /tmp/x  # anywhere: a simulated 6 GiB device
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import logging
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ollama_asgi.testing.gpu import (
    GIB,
    MIB,
    GpuBackend,
    GpuOptions,
    LoadProfile,
    SimulatedDevice,
    fit_load_profile,
)

__all__ = [
    "ModelSpec",
    "Step",
    "make_models",
    "make_trace",
    "pass_summary",
    "write_csv",
]


# -- the trace ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    size: int


def make_models(device_total: int, *, count: int = 12, ratio: float = 2.0, spread: float = 0.35) -> list[ModelSpec]:
    """``count`` models whose sizes add up to about ``ratio`` x ``device_total``, evenly spread
    between ``(1 - spread)`` and ``(1 + spread)`` times the mean, in MiB steps."""
    if count < 2:
        raise ValueError("a trace needs at least two models")
    mean = ratio * device_total / count
    models = []
    for i in range(count):
        factor = 1.0 - spread + 2.0 * spread * i / (count - 1)
        size = max(MIB, int(mean * factor) // MIB * MIB)
        models.append(ModelSpec(f"bench{i + 1:02d}-{size / GIB:.1f}g".replace(".", "p"), size))
    return models


def make_trace(models: Sequence[ModelSpec], steps: int, *, seed: int = 7, repeat: float = 0.35) -> list[str]:
    """Every model once in a shuffled order, then a mix of recent repeats (hits) and random picks."""
    rng = random.Random(seed)
    names = [m.name for m in models]
    first = names[:]
    rng.shuffle(first)
    trace = first[:steps]
    while len(trace) < steps:
        recent = list(dict.fromkeys(reversed(trace)))[:3]
        pick = rng.choice(recent) if rng.random() < repeat else rng.choice(names)
        trace.append(pick)
    return trace


# -- recording ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Step:
    """One request of the trace and what it did to the device."""

    run: str
    step: int
    t: float
    model: str
    size_gib: float
    status: int
    ok: bool
    latency_s: float
    loaded: bool
    load_s: float
    load_gbps: float
    evicted: str
    evictions: int
    oom: bool
    used_gib: float
    free_gib: float
    peak_used_gib: float
    resident_gib: float
    demand_gib: float
    models_resident: int
    frag_guard: float | None  # the guard's score, with the run's vram_reserved
    frag_default: float  # the same score with vram_reserved at its default
    error: str = ""


@dataclass(slots=True)
class Probe:
    kind: str  # warm | cold
    size_gib: float
    seconds: float
    gbps: float


def write_csv(path: Path, rows: Sequence[Any]) -> None:
    """Dataclass rows to CSV; floats with 4 decimals, None as an empty cell."""
    if not rows:
        path.write_text("")
        return
    names = [f.name for f in dataclasses.fields(rows[0])]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in rows:
            values = []
            for name in names:
                value = getattr(row, name)
                if value is None:
                    values.append("")
                elif isinstance(value, bool):
                    values.append(str(int(value)))
                elif isinstance(value, float):
                    values.append(f"{value:.4f}")
                else:
                    values.append(str(value))
            writer.writerow(values)


def pass_summary(steps: Sequence[Step], *, budget: int | None, baseline: int) -> dict[str, Any]:
    """What a pass shows: loads, evictions, failures, and the peak against total and budget."""
    peak = max((s.peak_used_gib for s in steps), default=0.0)
    frags = [s.frag_guard for s in steps if s.frag_guard is not None]
    loads = [s for s in steps if s.loaded and s.load_s > 0 and not s.oom]
    hits = [s.latency_s for s in steps if s.ok and not s.loaded]
    misses = [s.latency_s for s in steps if s.ok and s.loaded]
    summary: dict[str, Any] = {
        "steps": len(steps),
        "hit_latency_ms_median": round(statistics.median(hits) * 1000, 2) if hits else None,
        "miss_latency_s_median": round(statistics.median(misses), 3) if misses else None,
        "ok": sum(s.ok for s in steps),
        "failed": sum(not s.ok for s in steps),
        "out_of_memory": sum(s.oom for s in steps),
        "loads": len(loads),
        "evictions": sum(s.evictions for s in steps),
        "peak_used_gib": round(peak, 3),
        "peak_over_baseline_gib": round(peak - baseline / GIB, 3),
        "max_demand_gib": round(max((s.demand_gib for s in steps), default=0.0), 3),
        "max_frag_guard": round(max(frags), 5) if frags else None,
        "mean_frag_guard": round(statistics.fmean(frags), 5) if frags else None,
        "max_frag_default_reserved": round(max((s.frag_default for s in steps), default=0.0), 5),
        "load_gbps_mean": round(sum(s.size_gib for s in loads) * GIB / 1e9 / sum(s.load_s for s in loads), 3)
        if loads
        else None,
    }
    if budget is not None:
        summary["budget_gib"] = round(budget / GIB, 3)
        summary["within_budget"] = peak - baseline / GIB <= budget / GIB + 0.01
    return summary


class MemorySampler:
    """Polls ``read()`` -> (used, total) in a thread; the peak since the last ``take_peak()``."""

    def __init__(self, read: Callable[[], tuple[int, int]], interval: float = 0.002) -> None:
        self._read = read
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._peak = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            used, _ = self._read()
            with self._lock:
                self._peak = max(self._peak, used)
                self.samples.append((time.monotonic(), used))
            time.sleep(self.interval)

    def take_peak(self) -> int:
        used, _ = self._read()
        with self._lock:
            peak, self._peak = max(self._peak, used), used
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


# -- servers -------------------------------------------------------------------------------------------


class AppThread:
    """An ASGI app under uvicorn on a free loopback port, in a thread with its own event loop."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.loop: asyncio.AbstractEventLoop | None = None
        config = uvicorn.Config(app, loop="asyncio", lifespan="auto", log_level="warning", timeout_keep_alive=120)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True, name="gateway")

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        self.loop.close()

    def start(self) -> AppThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def post(url: str, body: dict[str, Any], timeout: float = 180.0) -> tuple[int, dict[str, Any], float]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    seconds = time.perf_counter() - started
    try:
        answer = json.loads(raw.splitlines()[-1] if raw.strip() else b"{}")
    except ValueError:
        answer = {"error": raw[:200].decode(errors="replace")}
    return status, answer if isinstance(answer, dict) else {"value": answer}, seconds


# -- the bench -----------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    backend: GpuBackend
    read: Callable[[], tuple[int, int]]
    nvml_source: Any  # a VramSource for the gateway (NVML, or the simulated device)
    baseline: int
    total: int
    started: float = field(default_factory=time.monotonic)
    log: list[str] = field(default_factory=list)
    guard_settings: dict[str, Any] = field(default_factory=dict)
    reserved: int = 512 * MIB  # vram_reserved for the gateways
    default_reserved: int = 512 * MIB  # the setting's default, for comparison

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f}s] {text}"
        print(line, flush=True)
        self.log.append(line)


def _emulated(models: Sequence[ModelSpec]) -> list[Any]:
    from ollama_asgi.testing.models import EmulatedModel

    return [
        EmulatedModel(name=m.name, size=m.size, context_length=8192, embedding_length=2048, parameter_size="8B")
        for m in models
    ]


def run_pass(
    bench: Bench,
    label: str,
    trace: Sequence[str],
    models: Sequence[ModelSpec],
    *,
    guard: bool,
    budget: int | None,
    sampler: MemorySampler,
    concurrency: int = 1,
) -> list[Step]:
    """The trace through a fresh emulator and gateway; ``concurrency`` requests at a time."""
    from ollama_asgi import OllamaGateway, Settings
    from ollama_asgi.testing import EmulatorServer

    sizes = {m.name: m.size for m in models}
    emulator = EmulatorServer(
        models=_emulated(models),
        gpu=bench.backend,
        vram_bytes=4 * bench.total,  # the emulator never evicts on its own: only the guard protects the card
        max_loaded_models=64,
        default_keep_alive=3600.0,
        token_interval=0.0,
        parallel=1,
    ).start()
    settings = Settings(
        upstreams=(emulator.url,),
        auth="none",
        nvml=guard and not bench.args.simulate,
        gpu_devices=(bench.args.device,),
        vram_budget=budget if guard else None,
        vram_reserved=bench.reserved,
        prewarm=False,
        keep_alive="60m",
        load_timeout=600.0,
        load_wait_timeout=600.0,
        read_timeout=600.0,
    )
    gateway = OllamaGateway(settings)
    lifecycle = gateway.lifecycle
    assert lifecycle is not None
    if guard and bench.args.simulate:
        for backend in lifecycle.backends:  # the simulated device is the backend's GPU
            backend.memory.domain.source = bench.nvml_source
    if guard and lifecycle.guard.source is None:
        raise SystemExit("the guard has no NVML source: is nvidia-ml-py installed and the GPU visible?")
    if guard:
        bench.guard_settings.update(
            vram_budget_gib=(budget or 0) / GIB,
            vram_margin=lifecycle.guard.margin,
            vram_reserved_gib=lifecycle.guard.reserved / GIB,
            source=type(lifecycle.guard.source).__name__,
        )
    server = AppThread(gateway).start()
    models_state = next(iter(lifecycle.models.values()))
    steps: list[Step] = []
    demanded: dict[str, int] = {}
    try:
        bench.say(
            f"{label}: {len(trace)} steps, {concurrency} at a time, guard {'on' if guard else 'off'}, "
            f"budget {_gib(budget)}, vram_reserved {_gib(bench.reserved)}"
        )
        for first in range(0, len(trace), concurrency):
            batch = list(enumerate(trace))[first : first + concurrency]
            records_before = len(bench.backend.records)
            oom_before = bench.backend.stats.out_of_memory
            evictions_before = lifecycle.guard.evictions + emulator.emulator.stats.evictions
            began = time.time()
            sampler.take_peak()
            answers: dict[int, tuple[int, dict[str, Any], float]] = {}

            def send(index: int, name: str, answers: dict[int, tuple[int, dict[str, Any], float]] = answers) -> None:
                body = {"model": name, "prompt": f"step {index}", "stream": False, "options": {"num_predict": 8}}
                answers[index] = post(f"{server.url}/api/generate", body)

            threads = [threading.Thread(target=send, args=item) for item in batch]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            peak = sampler.take_peak()
            used, total = bench.read()
            new = bench.backend.records[records_before:]
            resident = sum(a.memory for a in list(bench.backend.resident))
            out_of_memory = bench.backend.stats.out_of_memory - oom_before
            evictions = lifecycle.guard.evictions + emulator.emulator.stats.evictions - evictions_before
            frag_guard = lifecycle.guard.fragmentation(models_state) if guard else None
            frag_default = max(0.0, (used - resident - bench.default_reserved) / total)
            seen: set[str] = set()
            for position, (index, name) in enumerate(batch):
                status, answer, latency = answers[index]
                first_of_model = name not in seen  # a second request for the same model shares its load
                seen.add(name)
                mine = [r for r in new if r.key == _digest(name)] if first_of_model else []
                loads = [r for r in mine if r.ok]
                evicted = _evicted_since(lifecycle.guard.history, began, load=name) if first_of_model else []
                # What would stay loaded if nothing were evicted: every model the trace has touched so far.
                demanded[name] = max((r.memory for r in mine), default=demanded.get(name, sizes[name]))
                load_s = sum(r.seconds for r in loads)
                step = Step(
                    run=label,
                    step=index,
                    t=round(time.monotonic() - bench.started, 3),
                    model=name,
                    size_gib=sizes[name] / GIB,
                    status=status,
                    ok=status == 200,
                    latency_s=latency,
                    loaded=bool(loads),
                    load_s=load_s,
                    load_gbps=sum(r.size for r in loads) / load_s / 1e9 if load_s > 0 else 0.0,
                    evicted=";".join(evicted),
                    evictions=len(evicted) if guard else (evictions if position == 0 else 0),
                    oom=any(not r.ok and "allocate" in r.error for r in mine),
                    used_gib=used / GIB,
                    free_gib=(total - used) / GIB,
                    peak_used_gib=peak / GIB,
                    resident_gib=resident / GIB,
                    demand_gib=sum(demanded.values()) / GIB,
                    models_resident=len(bench.backend.resident),
                    frag_guard=frag_guard,
                    frag_default=frag_default,
                    error=str(answer.get("error", ""))[:160] if status != 200 else "",
                )
                steps.append(step)
                bench.say(
                    f"  {index:3d} {name:<16} {status} {latency:6.2f}s"
                    + (f" load {load_s:5.2f}s {step.load_gbps:5.2f} GB/s" if loads else " " * 23)
                    + f" used {step.used_gib:5.1f} peak {step.peak_used_gib:5.1f} GiB"
                    + (f" evicted {step.evicted}" if evicted else "")
                    + (" OUT OF MEMORY" if step.oom else "")
                )
            if out_of_memory and not any(s.oom for s in steps[-len(batch) :]):
                bench.say(f"  ({out_of_memory} allocation failure(s) not matched to a step)")
    finally:
        server.stop()
        emulator.stop()  # its shutdown unloads (frees) every model
        bench.backend.release_all()
        time.sleep(0.2)
        used, _ = bench.read()
        bench.say(f"{label}: done; device back to {used / GIB:.2f} GiB used (baseline {bench.baseline / GIB:.2f})")
    return steps


def _digest(name: str) -> str:
    from ollama_asgi.testing.models import EmulatedModel

    return EmulatedModel(name=name, size=0).digest


def _evicted_since(history: Sequence[dict[str, object]], since: float, load: str | None = None) -> list[str]:
    """Models the guard evicted in decisions taken at or after ``since`` (unix time), for ``load`` if given."""
    out: list[str] = []
    for entry in list(history):
        when, victims, target = entry.get("time"), entry.get("evicted"), str(entry.get("load", ""))
        if load is not None and target.removesuffix(":latest") != load.removesuffix(":latest"):
            continue
        if isinstance(when, int | float) and when >= since and isinstance(victims, list):
            out.extend(str(v).removesuffix(":latest") for v in victims)
    return out


def default_probe_sizes(total: int) -> tuple[list[float], list[float]]:
    """Cold and warm probe sizes (GiB), scaled from 2,4,8,16 and 1,2,4,8,16 GiB on an 80 GiB card."""
    scale = total / (80 * GIB)
    return [round(x * scale, 2) for x in (2, 4, 8, 16)], [round(x * scale, 2) for x in (1, 2, 4, 8, 16)]


def _default_reserved() -> int:
    from ollama_asgi.settings import Settings

    default = {f.name: f.default for f in dataclasses.fields(Settings)}["vram_reserved"]
    return int(default) if isinstance(default, int) else 512 * MIB


def measure_context_start(device: int) -> dict[str, float]:
    """Seconds a fresh process takes to create a CUDA context (each Ollama runner is such a process)."""
    code = (
        "import time, torch\n"
        "t = time.perf_counter(); torch.cuda.init(); a = time.perf_counter()\n"
        f"torch.empty(1, device='cuda:{device}'); torch.cuda.synchronize(); b = time.perf_counter()\n"
        "print(a - t, b - t)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        init, context = (float(x) for x in done.stdout.split()[-2:])
    except (subprocess.SubprocessError, ValueError, OSError) as exc:
        print(f"measuring the CUDA context start failed: {exc}", flush=True)
        return {}
    return {"cuda_init_s": init, "context_start_s": context}


def measure_nvml(bench: Bench, calls: int) -> dict[str, float]:
    """Seconds per call: the raw NVML query and the guard's reading (``VramSource.read``)."""
    out: dict[str, float] = {}
    source = bench.nvml_source
    if not bench.args.simulate:
        import pynvml

        handle = pynvml.nvmlDeviceGetHandleByIndex(bench.args.device)
        for _ in range(100):
            pynvml.nvmlDeviceGetMemoryInfo(handle)
        started = time.perf_counter()
        for _ in range(calls):
            pynvml.nvmlDeviceGetMemoryInfo(handle)
        out["nvml_query_us"] = (time.perf_counter() - started) / calls * 1e6
    for _ in range(100):
        source.read()
    started = time.perf_counter()
    for _ in range(calls):
        source.read()
    out["guard_read_us"] = (time.perf_counter() - started) / calls * 1e6
    return out


def run_probes(bench: Bench, cold_sizes: Iterable[float], warm_sizes: Iterable[float], repeats: int) -> list[Probe]:
    probes: list[Probe] = []
    for kind, sizes, reps in (("cold", cold_sizes, 1), ("warm", warm_sizes, repeats)):
        if kind == "warm":
            bench.backend.release(
                bench.backend.load_sync("warm-up", bench.backend.weights.size, bench.backend.weights.size)
            )
        for gib in sizes:
            size = int(gib * GIB)
            for _ in range(reps):
                allocation = bench.backend.load_sync(f"probe-{kind}", size, size, cold=kind == "cold")
                seconds = allocation.record.seconds
                bench.backend.release(allocation)
                probes.append(Probe(kind, gib, seconds, size / seconds / 1e9))
                bench.say(f"probe {kind:4} {gib:5.1f} GiB {seconds:6.2f}s {size / seconds / 1e9:6.2f} GB/s")
    return probes


def _gib(value: int | None) -> str:
    return "none" if value is None else f"{value / GIB:.1f} GiB"


def _filesystem(path: Path) -> str:
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return f"{kind} on {best or '?'}"


def plot(
    out: Path,
    passes: dict[str, list[Step]],
    probes: Sequence[Probe],
    fits: dict[str, LoadProfile],
    facts: dict[str, Any],
) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib is not installed: no plots"]
    total = facts["total_gib"]
    budget = facts.get("budget_gib")
    baseline = facts["baseline_gib"]
    rows = len(passes) + 1
    fig, axes = plt.subplots(rows, 1, figsize=(11, 3.6 * rows), sharex=True)
    for ax, (label, steps) in zip(axes[:-1], passes.items(), strict=False):
        xs = [s.step for s in steps]
        ax.plot(xs, [s.peak_used_gib for s in steps], "-", color="tab:red", lw=1, label="NVML used, peak in step")
        ax.plot(xs, [s.used_gib for s in steps], "o-", color="tab:blue", ms=3, label="NVML used after step")
        ax.plot(xs, [s.demand_gib for s in steps], "--", color="tab:gray", label="models kept loaded (no eviction)")
        ax.axhline(total, color="black", lw=1.5, label=f"device total {total:.1f} GiB")
        if budget is not None and "guard on" in label:
            ax.axhline(
                budget + baseline, color="tab:green", ls=":", lw=1.5, label=f"budget {budget:.0f} GiB + baseline"
            )
        for s in steps:
            if s.oom:
                ax.plot(s.step, s.peak_used_gib, "x", color="red", ms=10, mew=2)
            if s.evictions:
                ax.annotate(
                    str(s.evictions),
                    (s.step, s.used_gib),
                    textcoords="offset points",
                    xytext=(0, 6),
                    fontsize=7,
                    color="tab:purple",
                )
        ooms = sum(s.oom for s in steps)
        ax.set_title(
            f"{label}: {ooms} out-of-memory failure(s), {sum(s.evictions for s in steps)} eviction(s) (numbers)"
        )
        ax.set_ylabel("GiB")
        ax.set_ylim(0, max(total * 1.1, max((s.demand_gib for s in steps), default=0) * 1.05))
        ax.legend(fontsize=7, loc="upper left")
    ax = axes[-1]
    reserved, default = facts["guard"].get("vram_reserved_gib", 0.0), facts["default_reserved_gib"]
    for label, steps in passes.items():
        frags = [(s.step, s.frag_guard * 100) for s in steps if s.frag_guard is not None]
        if frags:
            ax.plot(
                [x for x, _ in frags],
                [y for _, y in frags],
                "o-",
                ms=3,
                label=f"{label}: guard's score, vram_reserved {reserved:.2f} GiB (measured)",
            )
        if "guard on" in label:
            ax.plot(
                [s.step for s in steps],
                [s.frag_default * 100 for s in steps],
                ".:",
                label=f"{label}: same score with the default vram_reserved {default:.2f} GiB",
            )
    ax.set_ylabel("% of device memory")
    ax.set_xlabel("trace step")
    ax.set_title("fragmentation score: (NVML used - loaded models' size_vram - vram_reserved) / total")
    ax.legend(fontsize=7)
    fig.suptitle(
        f"{facts['device']}: {facts['models']} models, {facts['trace_gib']:.0f} GiB in all, through the gateway"
    )
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    for kind, marker in (("cold", "s"), ("warm", "o")):
        measured = [p for p in probes if p.kind == kind]
        if measured:
            ax.plot(
                [p.size_gib for p in measured],
                [p.seconds for p in measured],
                marker,
                ls="",
                label=f"probe, {kind} page cache",
            )
    for label, steps in passes.items():
        loaded = [s for s in steps if s.loaded and s.load_s > 0]
        if loaded:
            ax.plot(
                [s.size_gib for s in loaded],
                [s.load_s for s in loaded],
                "^",
                ls="",
                alpha=0.6,
                label=f"trace loads ({label})",
            )
    top = max([p.size_gib for p in probes] + [s.size_gib for steps in passes.values() for s in steps] + [1.0])
    line_x = [0.0, top]
    for name, profile in fits.items():
        ax.plot(
            line_x,
            [profile.seconds(int(x * GIB)) for x in line_x],
            "-",
            lw=1,
            label=f"fit {name}: {profile.base_seconds:.2f}s + size / {profile.bytes_per_second / 1e9:.2f} GB/s",
        )
    ax.set_xlabel("model size (GiB)")
    ax.set_ylabel("load seconds (file -> host buffer -> GPU)")
    ax.set_title(f"Load time on {facts['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loads.png", dpi=110)
    plt.close(fig)
    return []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results/gpu")))
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--simulate", type=float, default=None, metavar="GIB", help="no CUDA: a simulated device")
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--ratio", type=float, default=2.0, help="trace total / device memory")
    parser.add_argument("--steps", type=int, default=36)
    parser.add_argument(
        "--budget-gib", type=float, default=None, help="the guard's vram_budget (default: 90%% of free)"
    )
    parser.add_argument("--cold-gib", default=None, help="sizes of cold probes (default: 2,4,8,16 per 80 GiB)")
    parser.add_argument("--warm-gib", default=None, help="sizes of warm probes (default: 1,2,4,8,16 per 80 GiB)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--nvml-calls", type=int, default=20000)
    parser.add_argument("--skip-noguard", action="store_true")
    parser.add_argument("--concurrency", type=int, default=2, help="clients in the extra guarded pass (1: none)")
    parser.add_argument(
        "--reserved",
        default="auto",
        help="vram_reserved for the gateways in GiB, or 'auto': what NVML shows used before any model loads",
    )
    args = parser.parse_args(argv)
    # The per-step lines say the same, shorter (a level survives uvicorn's logging set-up; `disabled` does not).
    logging.getLogger("ollama_asgi.access").setLevel(logging.CRITICAL)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # Readings before the CUDA context exists: what the driver already holds.
    nvml_source: Any
    if args.simulate:
        total_bytes = int(args.simulate * GIB)
        device = SimulatedDevice(total_bytes, context=min(512 * MIB, total_bytes // 16), index=args.device)
        options = GpuOptions(device=args.device, weights_dir=args.weights_dir, chunk_bytes=16 * MIB)
        backend = GpuBackend(options, device=device)
        before_context = 0
        nvml_source = device
    else:
        from ollama_asgi.vram import NvmlSource

        nvml_source = NvmlSource([args.device])
        before_context = nvml_source.read()[0].used
        backend = GpuBackend(GpuOptions(device=args.device, weights_dir=args.weights_dir))

    def read() -> tuple[int, int]:
        reading = nvml_source.read()[0]
        return int(reading.used), int(reading.total)

    time.sleep(0.2)
    baseline, total = read()
    bench = Bench(args, backend, read, nvml_source, baseline, total)
    bench.default_reserved = _default_reserved()
    granule = 64 * MIB
    auto = -(-baseline // granule) * granule  # rounded up
    bench.reserved = auto if args.reserved == "auto" else int(float(args.reserved) * GIB)
    facts: dict[str, Any] = {
        **backend.describe(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "weights_fs": _filesystem(backend.weights.directory if backend.weights.directory.exists() else Path("/")),
        "total_gib": total / GIB,
        "used_before_context_gib": before_context / GIB,
        "baseline_gib": baseline / GIB,
        "context_gib": (baseline - before_context) / GIB,
    }
    facts["default_reserved_gib"] = bench.default_reserved / GIB
    facts["reserved_gib"] = bench.reserved / GIB
    if not args.simulate:
        facts.update(measure_context_start(args.device))
    bench.say(f"device: {json.dumps(facts)}")

    facts.update(measure_nvml(bench, args.nvml_calls))
    bench.say(
        f"NVML query {facts.get('nvml_query_us', 0):.2f} us, guard reading {facts['guard_read_us']:.2f} us per call"
    )
    copy_bandwidth = getattr(backend.device, "copy_bandwidth", None)
    if copy_bandwidth is not None:
        for pinned in (True, False):
            rate = float(copy_bandwidth(GIB, pinned))
            facts[f"h2d_{'pinned' if pinned else 'pageable'}_gbps"] = rate / 1e9
            bench.say(f"host->device {'pinned' if pinned else 'pageable'}: {rate / 1e9:.1f} GB/s (1 GiB copies)")

    models = make_models(total, count=args.models, ratio=args.ratio)
    trace = make_trace(models, args.steps)
    largest = max(m.size for m in models)
    cold_sizes, warm_sizes = default_probe_sizes(total)
    if args.cold_gib is not None:
        cold_sizes = [float(x) for x in args.cold_gib.split(",") if x]
    if args.warm_gib is not None:
        warm_sizes = [float(x) for x in args.warm_gib.split(",") if x]
    probe_top = int(max(warm_sizes + cold_sizes) * GIB)
    seconds = backend.weights.ensure(max(largest, probe_top))
    facts["weights_file_gib"] = backend.weights.size / GIB
    facts["weights_write_gbps"] = backend.weights.size / seconds / 1e9 if seconds else None
    bench.say(f"weights file {backend.weights.size / GIB:.1f} GiB ready in {seconds:.1f}s ({facts['weights_fs']})")

    probes = run_probes(bench, cold_sizes, warm_sizes, args.repeats)
    probes_path = out / "probes.csv"
    write_csv(probes_path, probes)

    free = total - baseline
    step = GIB if free >= 8 * GIB else 64 * MIB
    budget = int(args.budget_gib * GIB) if args.budget_gib else int(free * 0.9) // step * step
    facts.update(
        budget_gib=budget / GIB,
        models=len(models),
        trace_gib=sum(m.size for m in models) / GIB,
        model_sizes_gib=[round(m.size / GIB, 2) for m in models],
        trace=trace,
    )
    sampler = MemorySampler(read).start()
    passes: dict[str, list[Step]] = {}
    errors: list[str] = []
    plan = [("guard on", True, 1)]
    if not args.skip_noguard:
        plan.append(("guard off", False, 1))
    if args.concurrency > 1:
        plan.append((f"guard on, {args.concurrency} clients", True, args.concurrency))
    try:
        for label, guarded, clients in plan:
            try:
                passes[label] = run_pass(
                    bench,
                    label,
                    trace,
                    models,
                    guard=guarded,
                    budget=budget if guarded else None,
                    sampler=sampler,
                    concurrency=clients,
                )
            except Exception:
                errors.append(f"{label}: {traceback.format_exc()}")
                bench.say(f"{label} broke off:\n{errors[-1]}")
            write_csv(out / "trace.csv", [s for steps in passes.values() for s in steps])
    finally:
        sampler.stop()
        backend.release_all()
    facts["guard"] = bench.guard_settings

    fits: dict[str, LoadProfile] = {}
    warm = [(int(p.size_gib * GIB), p.seconds) for p in probes if p.kind == "warm"]
    trace_loads = [
        (r.size, r.seconds) for r in backend.records if r.ok and r.key not in ("warm-up", "probe-warm", "probe-cold")
    ]
    if warm or trace_loads:
        fits["warm"] = fit_load_profile(warm + trace_loads, "warm page cache: probes and trace loads")
    if trace_loads:
        fits["trace"] = fit_load_profile(trace_loads, "trace loads through the gateway (warm page cache)")
    cold = [(int(p.size_gib * GIB), p.seconds) for p in probes if p.kind == "cold"]
    if cold:
        fits["cold"] = fit_load_profile(cold, "cold page cache: probes")
    notes = plot(out, passes, probes, fits, facts)

    summaries = {
        label: pass_summary(steps, budget=budget if "on" in label else None, baseline=baseline)
        for label, steps in passes.items()
    }
    summary = {
        "facts": facts,
        "fits": {k: dataclasses.asdict(v) for k, v in fits.items()},
        "passes": summaries,
        "notes": notes,
        "errors": errors,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    bench.say("summary: " + json.dumps(summaries))
    for name, profile in fits.items():
        bench.say(
            f"fit {name}: load_base_seconds={profile.base_seconds} load_bytes_per_second={profile.bytes_per_second:.4g}"
        )
    guard_pass = summaries.get("guard on", {})
    ok = (
        not errors
        and guard_pass.get("out_of_memory") == 0
        and guard_pass.get("failed") == 0
        and guard_pass.get("within_budget", False)
    )
    bench.say(f"guard pass {'held' if ok else 'FAILED'}: {json.dumps(guard_pass)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
