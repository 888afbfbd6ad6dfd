"""The headline claims on a real Ollama on a GPU: loads against size, cold starts, the VRAM guard,
overload and warmed prompt prefixes, each through the gateway against Ollama directly.

Every phase starts fresh ``ollama serve`` processes (:class:`ollama_asgi.testing.real.RealOllama`,
``gpu=True``) on one models store, and the gateway in this process under uvicorn. The models are
synthetic GGUFs of real shapes (Llama-3.2-1B/3B, Phi-3-mini, Qwen2.5-7B, Llama-3.1-8B; F16, the
project's own generator): each big weight matrix is drawn once per shape and written once per
layer, which changes nothing about loading (the bytes are read and copied all the same) and makes
a 14 GB model in seconds. The blobs are written straight into the store and registered with
``/api/create``, so no copy is made.

Phases (each writes ``PHASE.json`` under ``--out``):

``loads``      (e) every model loaded from a cold page cache (``posix_fadvise(DONTNEED)``) and twice
               from a warm one, beside reading the file alone and the host-to-device copy rate.
``churn``      (d) a trace over models adding up to about twice the usable memory: directly and
               through the gateway with the guard (NVML), one client then two; failures, evictions
               (models leaving ``/api/ps``), partial CPU offload, NVML peak.
``coldstart``  (a) a patterned pipeline (three models in turn, think time between steps): directly,
               through the gateway with pre-warming off, and on.
``overload``   (b) capacity with a closed loop, then Poisson arrivals at three times it: directly and
               through the gateway.
``prefix``     (c) time to first token of requests sharing a long system prompt, right after a load:
               directly and through the gateway with and without ``warm_prompts``.
``shared``     (d) two Ollama servers on one card, each unaware of the other, two clients each running
               its own churn trace at once: directly (each model on its rendezvous home) and through
               one gateway with both servers as backends and the guard reading NVML; failures,
               partial CPU offload, runner starts, NVML peak.
``affinity``   (c) two Ollama servers on one card, each holding a copy of one model; several long
               conversations at once, through one gateway with ``conversation_affinity`` on and off
               and directly turn by turn round the servers; time to first token and Ollama's prompt
               evaluation of later turns, and how many moved to the other server.

The card's usable memory is set by a ballast allocation held by another process (``ballast``),
which Ollama and NVML both see as memory in use, as when the card is shared.

    python bench/gpu/real_ollama.py ballast --leave-gib 20 --probe-out OUT/env.json   # in the background
    python bench/gpu/real_ollama.py run --store /data/models --out OUT loads churn coldstart
    python bench/gpu/real_ollama.py run --cpu --out /tmp/x loads churn   # a dry run on the CPU binary
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import statistics
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

GIB = 1 << 30
GUARD_BUDGET: list[int] = []  # a dry run's vram_budget for the gateway (no NVML there)
SYSTEM_LINE = "You are a careful assistant for the operations team. Answer briefly and cite the runbook. "

# name: the shape of a real model (F16); the vocabulary is the generator's own small one.
SHAPES: dict[str, dict[str, int]] = {
    "llama1b": {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "ff": 8192},  # Llama-3.2-1B
    "llama3b": {"hidden": 3072, "layers": 28, "heads": 24, "kv_heads": 8, "ff": 8192},  # Llama-3.2-3B
    "phi4b": {"hidden": 3072, "layers": 32, "heads": 32, "kv_heads": 32, "ff": 8192},  # Phi-3-mini
    "qwen7b": {"hidden": 3584, "layers": 28, "heads": 28, "kv_heads": 4, "ff": 18944},  # Qwen2.5-7B
    "llama8b": {"hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 8, "ff": 14336},  # Llama-3.1-8B
    "qwen14b": {"hidden": 5120, "layers": 48, "heads": 40, "kv_heads": 8, "ff": 13824},  # Qwen2.5-14B
}
# The same names at toy sizes, for a dry run on the CPU binary.
CPU_SHAPES: dict[str, dict[str, int]] = {
    name: {"hidden": 64 * (i + 1), "layers": 2 + i, "heads": 4, "kv_heads": 2, "ff": 128 * (i + 1)}
    for i, name in enumerate(SHAPES)
}
SHAPE_OF = {
    "llama1b": "Llama-3.2-1B",
    "llama3b": "Llama-3.2-3B",
    "phi4b": "Phi-3-mini (3.8B)",
    "qwen7b": "Qwen2.5-7B",
    "llama8b": "Llama-3.1-8B",
    "qwen14b": "Qwen2.5-14B",
}


def now() -> float:
    return time.perf_counter()


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": max(values) if values else None,
    }


# -- context ---------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    out: Path
    store: Path
    binary: str
    gpu: bool
    started: float = field(default_factory=now)
    lines: list[str] = field(default_factory=list)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def say(self, text: str) -> None:
        line = f"[{now() - self.started:7.1f}s] {text}"
        print(line, flush=True)
        self.lines.append(line)

    def left(self) -> float:
        return self.args.deadline - (now() - self.started)

    def write(self, name: str, data: dict[str, Any]) -> None:
        data = {"phase": name, "device": device_name(), **data}
        (self.out / f"{name}.json").write_text(json.dumps(data, indent=1, default=str))
        self.say(f"wrote {name}.json")


def device_name() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        return str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0)))
    except Exception:
        return "cpu"


# -- NVML ------------------------------------------------------------------------------------------------


class Memory:
    """NVML used memory of GPU 0, and the peak between two ``take_peak`` calls (a sampler thread)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            self.nvml = None
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> tuple[int, int]:
        if self.handle is None:
            return 0, 0
        info = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        return int(info.used), int(info.total)

    def start(self) -> Memory:
        if self.handle is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="nvml")
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            used, _ = self.read()
            self.peak = max(self.peak, used)
            time.sleep(self.interval)

    def take_peak(self) -> int:
        """The highest reading since the last call (or the current one), and start again."""
        peak = max(self.peak, self.read()[0])
        self.peak = 0
        return peak

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)


# -- HTTP ------------------------------------------------------------------------------------------------


def post(url: str, body: dict[str, Any], timeout: float = 300.0) -> tuple[int, dict[str, Any], float]:
    """One non-streamed exchange: status, the last JSON object of the answer, seconds."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    started = now()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        return 0, {"error": f"{type(exc).__name__}: {exc}"}, now() - started
    seconds = now() - started
    try:
        answer = json.loads(raw.splitlines()[-1] if raw.strip() else b"{}")
    except ValueError:
        answer = {"error": raw[:300].decode(errors="replace")}
    return status, answer if isinstance(answer, dict) else {"value": answer}, seconds


def stream_ttft(url: str, body: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """A streamed exchange: time to the first chunk with text, total time, status, the final chunk."""
    data = json.dumps({**body, "stream": True}).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    started = now()
    first: float | None = None
    last: dict[str, Any] = {}
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
            for line in response:
                if not line.strip():
                    continue
                chunk = json.loads(line)
                text = (chunk.get("message") or {}).get("content") or chunk.get("response")
                if first is None and text:
                    first = now() - started
                last = chunk
    except urllib.error.HTTPError as exc:
        status, last = exc.code, {"error": exc.read()[:300].decode(errors="replace")}
    except OSError as exc:
        status, last = 0, {"error": f"{type(exc).__name__}: {exc}"}
    return {"status": status, "ttft_s": first, "total_s": now() - started, "final": last}


def ps(url: str) -> dict[str, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url + "/api/ps", timeout=10) as response:
            body = json.loads(response.read())
    except (OSError, ValueError):
        return {}
    return {m["name"].removesuffix(":latest"): m for m in body.get("models") or []}


# -- servers ---------------------------------------------------------------------------------------------


def ollama_env(ctx: Ctx, **extra: str) -> dict[str, str]:
    env = {
        "OLLAMA_CONTEXT_LENGTH": str(ctx.args.num_ctx),
        "OLLAMA_KEEP_ALIVE": "30m",
        "OLLAMA_NUM_PARALLEL": "1",
        "OLLAMA_LOAD_TIMEOUT": "10m",
    }
    env.update(item.split("=", 1) for item in ctx.args.ollama_env)
    env.update(extra)
    return env


@contextlib.contextmanager
def ollama(ctx: Ctx, label: str, **extra: str) -> Iterator[Any]:
    from ollama_asgi.testing.real import RealOllama

    server = RealOllama(ctx.binary, env=ollama_env(ctx, **extra), models_dir=ctx.store, gpu=ctx.gpu)
    server.start(timeout=60)
    try:
        yield server
    finally:
        (ctx.out / "logs").mkdir(exist_ok=True)
        text = server.log()
        (ctx.out / "logs" / f"ollama-{label}.log").write_text(
            "\n".join(text.splitlines()[-400:]) if len(text) > 400_000 else text
        )
        server.stop()
        wait_for_memory(ctx)


def wait_for_memory(ctx: Ctx, timeout: float = 15.0) -> None:
    """After a server stops, wait until NVML shows its memory back (runners exit asynchronously)."""
    memory = Memory()
    base = ctx.args.baseline_used
    if memory.handle is None or base is None:
        return
    deadline = now() + timeout
    while now() < deadline and memory.read()[0] > base + 256 * 2**20:
        time.sleep(0.1)


class Gateway:
    """The gateway in this process under uvicorn, in front of one Ollama."""

    def __init__(self, upstream: str, **settings: Any) -> None:
        from bench.gpu.run import AppThread
        from ollama_asgi import OllamaGateway, Settings

        base: dict[str, Any] = {
            "upstreams": (upstream,),
            "auth": "none",
            "keep_alive": "30m",
            "load_timeout": 600.0,
            "load_wait_timeout": 600.0,
            "read_timeout": 600.0,
            "num_ctx_buckets": (4096,),
            "default_num_ctx": 4096,
            "prewarm": False,
            "nvml": False,
        }
        base.update(settings)
        if base.get("nvml") is False and GUARD_BUDGET:  # a dry run: the guard works from a budget
            base.setdefault("vram_budget", GUARD_BUDGET[0])
        self.settings = Settings(**base)
        self.app = OllamaGateway(self.settings)
        self.thread = AppThread(self.app).start()
        self.url = self.thread.url

    @property
    def lifecycle(self) -> Any:
        return self.app.lifecycle

    def snapshot(self) -> dict[str, Any]:
        snap = self.lifecycle.snapshot() if self.lifecycle is not None else {}
        keep = ("loads", "coalesced", "load_failures", "evictions", "prewarm")
        out = {k: v for k, v in snap.items() if k in keep}
        if self.lifecycle is not None:
            out["prefix_warms"] = self.lifecycle.loader.prefix_warms
            out["guard_refusals"] = self.lifecycle.guard.refusals
        return out

    def prewarm(self, model: str, timeout: float = 300.0) -> None:
        """Load ``model`` the way the gateway's pre-warming does (its loader, guard and warm prompt)."""
        lifecycle = self.lifecycle
        backend = lifecycle.backends[0]
        future = asyncio.run_coroutine_threadsafe(lifecycle.prewarmer.warm(backend, model), self.thread.loop)
        future.result(timeout)

    def stop(self) -> None:
        self.thread.stop()


# -- models ----------------------------------------------------------------------------------------------


class _Reused:
    """``numpy.random.default_rng`` for the generator, drawing each large matrix shape once."""

    def __init__(self, seed: int, cache: dict[Any, Any]) -> None:
        import numpy as np

        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._cache = cache

    def normal(self, loc: float, scale: float, size: Any) -> Any:
        import numpy as np

        if isinstance(size, tuple) and len(size) == 2 and size[0] * size[1] >= 1 << 20:
            key = (loc, scale, size)
            if key not in self._cache:
                self._cache[key] = self._rng.normal(loc, scale, size).astype(np.float16).view(_F16)
            return self._cache[key]
        return self._rng.normal(loc, scale, size)


def _f16_class() -> Any:
    import numpy as np

    class F16(np.ndarray):  # astype(float16) of an F16 array is the array itself: no copy per layer
        def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> Any:
            if np.dtype(dtype) == np.float16:
                return self.view(np.ndarray)
            return np.ndarray.astype(self, dtype, *args, **kwargs)

    return F16


_F16: Any = None


def write_model_file(spec: Any, path: Path) -> None:
    global _F16
    import numpy as np

    from ollama_asgi.testing import gguf_models

    if _F16 is None:
        _F16 = _f16_class()
    cache: dict[Any, Any] = {}
    original = np.random.default_rng
    np.random.default_rng = lambda seed=None: _Reused(seed or 0, cache)  # type: ignore[assignment]
    try:
        gguf_models.write_gguf(spec, path)
    finally:
        np.random.default_rng = original  # type: ignore[assignment]


def make_models(ctx: Ctx, names: Sequence[str]) -> None:
    """Write each missing model's GGUF into the store's blobs and register it (``/api/create``)."""
    from concurrent.futures import ThreadPoolExecutor

    from ollama_asgi.testing.gguf_models import CHAT_TEMPLATE, ModelSpec

    shapes = CPU_SHAPES if ctx.args.cpu else SHAPES
    index_path = ctx.store / "bench-models.json"
    known = json.loads(index_path.read_text()) if index_path.exists() else {}
    blobs = ctx.store / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    todo = [n for n in names if n not in known or not Path(known[n]["path"]).exists()]
    made: dict[str, dict[str, Any]] = {}

    def digest(name: str, path: Path, seconds: float) -> None:
        started = now()
        with path.open("rb") as f:
            hexdigest = hashlib.file_digest(f, "sha256").hexdigest()
        target = blobs / f"sha256-{hexdigest}"
        path.replace(target)
        size = target.stat().st_size
        made[name] = {
            "path": str(target),
            "digest": hexdigest,
            "bytes": size,
            "write_s": seconds,
            "hash_s": now() - started,
        }

    with ThreadPoolExecutor(4) as pool:
        futures = []
        for i, name in enumerate(todo):
            spec = ModelSpec(name, f"{name} says the quick brown fox jumps over the lazy dog.", seed=i, **shapes[name])
            partial = blobs / f"{name}.partial"
            started = now()
            write_model_file(spec, partial)
            seconds = now() - started
            ctx.say(f"wrote {name}: {partial.stat().st_size / 1e9:.2f} GB in {seconds:.1f}s")
            futures.append(pool.submit(digest, name, partial, seconds))
            made.setdefault(name, {})["parameters"] = spec.parameters
        for future in futures:
            future.result()
    if todo:
        with ollama(ctx, "create") as server:
            for name in todo:
                info = made[name]
                body = {
                    "model": name,
                    "files": {f"{name}.gguf": f"sha256:{info['digest']}"},
                    "template": CHAT_TEMPLATE,
                    "parameters": {"stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]},
                    "stream": False,
                }
                status, answer, seconds = post(server.url + "/api/create", body)
                if status != 200:
                    raise RuntimeError(f"create {name}: {status} {answer}")
                ctx.say(f"registered {name} in {seconds:.1f}s")
        for name in todo:
            spec_shape = shapes[name]
            known[name] = {**made[name], **spec_shape, "shape_of": SHAPE_OF[name]}
        index_path.write_text(json.dumps(known, indent=1))
    ctx.models = known


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_file(path: str) -> float:
    """Seconds to read the whole file once (16 MiB reads into one buffer)."""
    buffer = bytearray(16 << 20)
    view = memoryview(buffer)
    started = now()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return now() - started


_RUNNER_STARTED = re.compile(r"runner started in ([0-9.]+) seconds")


def runner_seconds(log: str) -> list[float]:
    return [float(m) for m in _RUNNER_STARTED.findall(log)]


# -- (e) loads against size --------------------------------------------------------------------------


def phase_loads(ctx: Ctx) -> None:
    memory = Memory()
    names = sorted((n for n in ctx.models if n in NEEDS["loads"]), key=lambda n: ctx.models[n]["bytes"])
    rows: list[dict[str, Any]] = []
    with ollama(ctx, "loads") as server:
        for name in names:
            if ctx.left() < 40:
                ctx.say("loads: out of time")
                break
            path = ctx.models[name]["path"]
            size = ctx.models[name]["bytes"]
            drop_cache(path)
            cold_read = read_file(path)  # the file alone from disk, then from the page cache
            warm_read = read_file(path)
            for kind in ("cold", "warm", "warm"):
                if kind == "cold":
                    drop_cache(path)
                before_log = len(runner_seconds(server.log()))
                base = memory.read()[0]
                status, answer, seconds = post(server.url + "/api/generate", {"model": name, "keep_alive": "30m"})
                loaded = ps(server.url).get(name, {})
                used = memory.read()[0]
                runner = runner_seconds(server.log())[before_log:]
                row = {
                    "model": name,
                    "bytes": size,
                    "cache": kind,
                    "status": status,
                    "load_s": seconds,
                    "gbps": size / seconds / 1e9,
                    "runner_started_s": runner[0] if runner else None,
                    "size": loaded.get("size"),
                    "size_vram": loaded.get("size_vram"),
                    "nvml_delta": used - base if memory.handle else None,
                    "read_cold_s": cold_read,
                    "read_warm_s": warm_read,
                    "error": answer.get("error"),
                }
                rows.append(row)
                ctx.say(
                    f"load {name} {size / 1e9:5.2f} GB {kind}: {seconds:6.2f}s ({row['gbps']:.2f} GB/s) "
                    f"file read cold {size / cold_read / 1e9:.2f} warm {size / warm_read / 1e9:.2f} GB/s "
                    f"size_vram {(loaded.get('size_vram') or 0) / GIB:.2f} GiB"
                )
                post(server.url + "/api/generate", {"model": name, "keep_alive": 0})
                deadline = now() + 20
                while now() < deadline and (name in ps(server.url) or memory.read()[0] > base + 128 * 2**20):
                    time.sleep(0.05)
            ctx.write("loads", {"rows": rows, "models": ctx.models})


# -- (d) the VRAM guard against Ollama's own scheduler ----------------------------------------------------


def churn_trace(names: Sequence[str], steps: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    first = list(names)
    rng.shuffle(first)
    trace = first[:steps]
    while len(trace) < steps:
        pick = rng.choice(names)
        if pick != trace[-1]:
            trace.append(pick)
    return trace


def is_oom(text: str) -> bool:
    text = text.lower()
    return any(k in text for k in ("out of memory", "cudamalloc", "oom", "unable to allocate", "cuda error"))


def run_churn(ctx: Ctx, label: str, trace: Sequence[str], *, gateway: bool, clients: int) -> dict[str, Any]:
    memory = Memory().start()
    steps: list[dict[str, Any]] = []
    with ollama(ctx, f"churn-{label}") as server:
        gw = Gateway(server.url, nvml=ctx.gpu, gpu_devices=(0,)) if gateway else None
        url = (gw.url if gw else server.url) + "/api/generate"
        resident: dict[str, dict[str, Any]] = {}
        evictions = 0
        loads_before = server.loads()
        started = now()
        try:
            for first in range(0, len(trace), clients):
                if ctx.left() < 30:
                    ctx.say(f"churn {label}: out of time at step {first}")
                    break
                batch = list(enumerate(trace))[first : first + clients]
                memory.take_peak()
                answers: dict[int, tuple[int, dict[str, Any], float]] = {}
                runs_before = server.loads()

                def send(i: int, name: str, answers: dict[int, Any] = answers) -> None:
                    body = {"model": name, "prompt": f"step {i}", "stream": False, "options": {"num_predict": 8}}
                    answers[i] = post(url, body)

                threads = [threading.Thread(target=send, args=item) for item in batch]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                peak = memory.take_peak()
                now_ps = ps(server.url)
                left = [n for n in resident if n not in now_ps]
                evictions += len(left)
                resident = now_ps
                used, total = memory.read()
                for i, name in batch:
                    status, answer, seconds = answers[i]
                    info = now_ps.get(name, {})
                    evals = answer.get("eval_count") or 0
                    eval_ns = answer.get("eval_duration") or 0
                    error = str(answer.get("error") or "")
                    steps.append(
                        {
                            "run": label,
                            "step": i,
                            "model": name,
                            "status": status,
                            "latency_s": seconds,
                            "load_s": (answer.get("load_duration") or 0) / 1e9,
                            "tokens_per_s": evals / (eval_ns / 1e9) if eval_ns else None,
                            "oom": bool(error) and is_oom(error),
                            "error": error[:240],
                            "size": info.get("size"),
                            "size_vram": info.get("size_vram"),
                            "offloaded": bool(info) and (info.get("size_vram") or 0) < (info.get("size") or 0),
                            "resident": ";".join(sorted(now_ps)),
                            "left": ";".join(left),
                            "runner_starts": server.loads() - runs_before,
                            "used_gib": used / GIB,
                            "peak_gib": peak / GIB,
                        }
                    )
                    ctx.say(
                        f"  {label} {i:3d} {name:<8} {status} {seconds:6.2f}s used {used / GIB:5.1f} "
                        f"peak {peak / GIB:5.1f} GiB resident {sorted(now_ps)}"
                        + (f" left {left}" if left else "")
                        + (f" ERROR {error[:120]}" if error else "")
                    )
        finally:
            snap = gw.snapshot() if gw else {}
            if gw:
                gw.stop()
            memory.stop()
        total_s = now() - started
        loads = server.loads() - loads_before
    ok = [s for s in steps if s["status"] == 200]
    return {
        "label": label,
        "gateway": gateway,
        "clients": clients,
        "steps": steps,
        "summary": {
            "requests": len(steps),
            "ok": len(ok),
            "failed": len(steps) - len(ok),
            "oom": sum(s["oom"] for s in steps),
            "runner_starts": loads,
            "evictions_seen": evictions,
            "offloaded_steps": sum(s["offloaded"] for s in steps),
            "peak_used_gib": max((s["peak_gib"] for s in steps), default=None),
            "latency_ok": summary([s["latency_s"] for s in ok]),
            "wall_s": total_s,
            "gateway": snap,
        },
    }


def phase_churn(ctx: Ctx) -> None:
    names = sorted(ctx.models)
    trace = churn_trace(names, ctx.args.churn_steps)
    runs = []
    for label, gateway, clients in (
        ("direct", False, 1),
        ("gateway", True, 1),
        ("direct-2clients", False, 2),
        ("gateway-2clients", True, 2),
    ):
        if ctx.left() < 60:
            ctx.say(f"churn: no time for {label}")
            break
        ctx.say(f"churn {label}: {len(trace)} steps {trace}")
        runs.append(run_churn(ctx, label, trace, gateway=gateway, clients=clients))
        ctx.say(f"churn {label}: {json.dumps(runs[-1]['summary'], default=str)}")
        ctx.write("churn", {"trace": trace, "models": ctx.models, "runs": runs, "usable": ctx.args.usable})


# -- (a) cold starts on a patterned trace -----------------------------------------------------------------


def phase_coldstart(ctx: Ctx) -> None:
    cycle = [n for n in ctx.args.cycle.split(",") if n in ctx.models]
    trace = cycle * ctx.args.cycles
    think = ctx.args.think
    runs = []
    for label, gateway, prewarm in (
        ("direct", False, False),
        ("gateway", True, False),
        ("gateway-prewarm", True, True),
    ):
        if ctx.left() < 70:
            ctx.say(f"coldstart: no time for {label}")
            break
        memory = Memory()
        steps = []
        with ollama(ctx, f"cold-{label}") as server:
            gw = (
                Gateway(server.url, nvml=ctx.gpu, gpu_devices=(0,), prewarm=prewarm, prewarm_threshold=0.6)
                if gateway
                else None
            )
            url = (gw.url if gw else server.url) + "/api/generate"
            started = now()
            try:
                for i, name in enumerate(trace):
                    if ctx.left() < 20:
                        break
                    loaded_before = name in ps(server.url)
                    runs_before = server.loads()
                    body = {"model": name, "prompt": f"step {i}", "stream": False, "options": {"num_predict": 8}}
                    status, answer, seconds = post(url, body)
                    steps.append(
                        {
                            "run": label,
                            "step": i,
                            "model": name,
                            "status": status,
                            "latency_s": seconds,
                            "resident_before": loaded_before,
                            "cold": not loaded_before,
                            "runner_starts_during": server.loads() - runs_before,
                            "used_gib": memory.read()[0] / GIB,
                            "error": str(answer.get("error") or "")[:200],
                        }
                    )
                    ctx.say(f"  {label} {i:2d} {name:<8} {status} {seconds:6.2f}s cold={not loaded_before}")
                    time.sleep(think)
            finally:
                snap = gw.snapshot() if gw else {}
                if gw:
                    gw.stop()
            wall = now() - started
            loads = server.loads()
        lat = [s["latency_s"] for s in steps if s["status"] == 200]
        cold = [s for s in steps if s["cold"]]
        runs.append(
            {
                "label": label,
                "steps": steps,
                "summary": {
                    "requests": len(steps),
                    "ok": len(lat),
                    "cold_starts": len(cold),
                    "cold_latency": summary([s["latency_s"] for s in cold]),
                    "warm_latency": summary([s["latency_s"] for s in steps if not s["cold"]]),
                    "latency": summary(lat),
                    "runner_starts": loads,
                    "wall_s": wall,
                    "gateway": snap,
                },
            }
        )
        ctx.say(f"coldstart {label}: {json.dumps(runs[-1]['summary'], default=str)}")
        ctx.write("coldstart", {"trace": trace, "think_s": think, "runs": runs})


# -- (b) overload at three times capacity ---------------------------------------------------------------


async def _open_loop(url: str, model: str, rate: float, seconds: float, *, seed: int, limit: float) -> list[Any]:
    import aiohttp

    rng = random.Random(seed)
    results: list[tuple[float, int, float]] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=limit)) as session:

        async def one(i: int) -> None:
            body = {"model": model, "prompt": f"request {i}", "stream": False, "options": {"num_predict": 32}}
            sent = now()
            try:
                async with session.post(url, json=body) as response:
                    await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError):
                status = 0
            results.append((sent, status, now() - sent))

        tasks = []
        start = now()
        at = 0.0
        i = 0
        while at < seconds:
            delay = start + at - now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
            i += 1
            at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
    return [(sent - start, status, latency) for sent, status, latency in results]


async def _closed_loop(url: str, model: str, clients: int, seconds: float) -> int:
    import aiohttp

    done = 0
    end = now() + seconds
    async with aiohttp.ClientSession() as session:

        async def client(c: int) -> None:
            nonlocal done
            i = 0
            while now() < end:
                body = {"model": model, "prompt": f"c{c} r{i}", "stream": False, "options": {"num_predict": 32}}
                async with session.post(url, json=body) as response:
                    await response.read()
                    if response.status == 200:
                        done += 1
                i += 1

        await asyncio.gather(*(client(c) for c in range(clients)))
    return done


def phase_overload(ctx: Ctx) -> None:
    model = "llama8b" if "llama8b" in ctx.models else sorted(ctx.models)[0]
    parallel = ctx.args.parallel
    window = ctx.args.window
    slo = ctx.args.slo
    result: dict[str, Any] = {"model": model, "parallel": parallel, "window_s": window, "slo_s": slo}
    with ollama(ctx, "overload-capacity", OLLAMA_NUM_PARALLEL=str(parallel)) as server:
        post(server.url + "/api/generate", {"model": model, "prompt": "warm", "options": {"num_predict": 4}})
        done = asyncio.run(_closed_loop(server.url + "/api/generate", model, 2 * parallel, ctx.args.capacity_s))
    capacity = done / ctx.args.capacity_s
    rate = 3 * capacity
    result.update(capacity_rps=capacity, offered_rps=rate)
    ctx.say(f"overload: capacity {capacity:.1f} req/s (closed loop, {2 * parallel} clients); offering {rate:.1f}")
    runs = []
    for label in ("direct", "gateway"):
        if ctx.left() < window * 3 + 30:
            ctx.say(f"overload: no time for {label}")
            break
        with ollama(ctx, f"overload-{label}", OLLAMA_NUM_PARALLEL=str(parallel)) as server:
            post(server.url + "/api/generate", {"model": model, "prompt": "warm", "options": {"num_predict": 4}})
            gw = (
                Gateway(
                    server.url,
                    parallel=parallel,
                    max_queue=ctx.args.max_queue,
                    queue_timeout=ctx.args.queue_timeout,
                )
                if label == "gateway"
                else None
            )
            url = (gw.url if gw else server.url) + "/api/generate"
            try:
                post(url, {"model": model, "prompt": "warm", "options": {"num_predict": 4}})
                rows = asyncio.run(_open_loop(url, model, rate, window, seed=5, limit=ctx.args.request_timeout))
            finally:
                snap = gw.snapshot() if gw else {}
                if gw:
                    gw.stop()
        ok = [lat for _, status, lat in rows if status == 200]
        good = [lat for lat in ok if lat <= slo]
        statuses: dict[str, int] = {}
        for _, status, _ in rows:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        last_done = max((sent + lat for sent, _, lat in rows), default=window)
        run = {
            "label": label,
            "sent": len(rows),
            "statuses": statuses,
            "ok_latency": summary(ok),
            "goodput_rps": len(good) / window,
            "throughput_ok_rps": len(ok) / max(window, last_done),
            "drain_s": max(0.0, last_done - window),
            "rows": rows,
            "gateway": snap,
        }
        runs.append(run)
        ctx.say(f"overload {label}: {json.dumps({k: v for k, v in run.items() if k != 'rows'}, default=str)}")
        result["runs"] = runs
        ctx.write("overload", result)
    result["runs"] = runs
    ctx.write("overload", result)


# -- (c) a long shared system prompt ---------------------------------------------------------------------


def phase_prefix(ctx: Ctx) -> None:
    model = "llama8b" if "llama8b" in ctx.models else sorted(ctx.models)[0]
    system = (SYSTEM_LINE * 200)[: ctx.args.system_chars]
    questions = [f"Question {i}: what does step {i} of the runbook say?" for i in range(ctx.args.prefix_requests)]
    runs = []
    for label, gateway, warm in (("direct", False, False), ("gateway", True, False), ("gateway-warm", True, True)):
        if ctx.left() < 40:
            ctx.say(f"prefix: no time for {label}")
            break
        with ollama(ctx, f"prefix-{label}") as server:
            settings: dict[str, Any] = {"warm_prompts": ((model, system),)} if warm else {}
            gw = Gateway(server.url, **settings) if gateway else None
            base = gw.url if gw else server.url
            try:
                # The model comes in ahead of the requests: through the gateway by its pre-warming
                # (which fills the prompt cache when warm_prompts names the model), directly by a load.
                load_started = now()
                status = 200
                if gw:
                    gw.prewarm(model)
                else:
                    status, _, _ = post(base + "/api/generate", {"model": model})
                load_s = now() - load_started
                rows = []
                for i, question in enumerate(questions):
                    body = {
                        "model": model,
                        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
                        "options": {"num_predict": 8},
                    }
                    row = stream_ttft(base + "/api/chat", body)
                    final = row.pop("final")
                    row.update(
                        step=i,
                        prompt_eval_count=final.get("prompt_eval_count"),
                        prompt_eval_s=(final.get("prompt_eval_duration") or 0) / 1e9,
                        error=final.get("error"),
                    )
                    rows.append(row)
                    ctx.say(
                        f"  prefix {label} {i} ttft {row['ttft_s'] or 0:.3f}s prompt tokens "
                        f"{row['prompt_eval_count']} in {row['prompt_eval_s']:.3f}s"
                    )
            finally:
                snap = gw.snapshot() if gw else {}
                if gw:
                    gw.stop()
        runs.append({"label": label, "load_status": status, "load_s": load_s, "rows": rows, "gateway": snap})
        ctx.write("prefix", {"model": model, "system_chars": len(system), "runs": runs})


# -- (d) two servers sharing one card ---------------------------------------------------------------------

SHARED_BACKENDS = ("one", "two")  # names whose rendezvous ranking splits the shared models two and two


def rendezvous_home(model: str, backends: Sequence[str] = SHARED_BACKENDS) -> str:
    """The backend the gateway's placement ranks first for ``model`` (equal weights)."""
    import math

    from ollama_asgi.model_names import canonical_model

    key = canonical_model(model).encode()

    def score(name: str) -> float:
        digest = hashlib.blake2b(key + b"\0" + name.encode(), digest_size=8).digest()
        return -1.0 / math.log((int.from_bytes(digest, "big") + 1) / (2**64 + 1))

    return max(backends, key=score)


class _PsWatch:
    """Both servers' ``/api/ps`` every 0.25 s: who holds what, and whether any model is partly on the CPU."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.offloaded: set[tuple[str, str]] = set()
        self.seen: dict[str, set[str]] = {name: set() for name in urls}
        self.max_resident = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ps-watch")

    def start(self) -> _PsWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            resident = 0
            for name, url in self.urls.items():
                for model, info in ps(url).items():
                    resident += 1
                    self.seen[name].add(model)
                    if (info.get("size_vram") or 0) < (info.get("size") or 0):
                        self.offloaded.add((name, model))
            self.max_resident = max(self.max_resident, resident)
            self._stop.wait(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def run_shared(ctx: Ctx, label: str, traces: Sequence[Sequence[str]], *, gateway: bool) -> dict[str, Any]:
    memory = Memory().start()
    steps: list[dict[str, Any]] = []
    with ollama(ctx, f"shared-{label}-one") as server_a, ollama(ctx, f"shared-{label}-two") as server_b:
        servers = dict(zip(SHARED_BACKENDS, (server_a, server_b), strict=True))
        gw = None
        if gateway:
            from ollama_asgi.specs import BackendSpec

            backends = tuple(BackendSpec(server.url, name) for name, server in servers.items())
            urls = tuple(b.url for b in backends)
            gw = Gateway(server_a.url, upstreams=urls, backends=backends, nvml=ctx.gpu, gpu_devices=(0,))
        watch = _PsWatch({name: server.url for name, server in servers.items()}).start()
        loads_before = {name: server.loads() for name, server in servers.items()}
        started = now()

        def client(c: int, trace: Sequence[str]) -> None:
            for i, model in enumerate(trace):
                if ctx.left() < 25:
                    return
                home = rendezvous_home(model)
                url = (gw.url if gw else servers[home].url) + "/api/generate"
                body = {
                    "model": model,
                    "prompt": f"client {c} step {i}",
                    "stream": False,
                    "options": {"num_predict": 8},
                }
                sent = now() - started
                status, answer, seconds = post(url, body)
                error = str(answer.get("error") or "")
                used, _ = memory.read()
                steps.append(
                    {
                        "run": label,
                        "client": c,
                        "step": i,
                        "model": model,
                        "home": home,
                        "sent_s": sent,
                        "status": status,
                        "latency_s": seconds,
                        "load_s": (answer.get("load_duration") or 0) / 1e9,
                        "oom": bool(error) and is_oom(error),
                        "error": error[:240],
                        "used_gib": used / GIB,
                    }
                )
                ctx.say(
                    f"  {label} c{c} {i:2d} {model:<8} {status} {seconds:6.2f}s used {used / GIB:5.1f} GiB"
                    + (f" ERROR {error[:140]}" if error else "")
                )

        try:
            threads = [threading.Thread(target=client, args=(c, trace)) for c, trace in enumerate(traces)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            watch.stop()
            snap = gw.snapshot() if gw else {}
            served_by = {}
            if gw is not None:
                served_by = {name: sorted(models) for name, models in watch.seen.items()}
                gw.stop()
            peak = memory.take_peak()
            memory.stop()
        wall = now() - started
        starts = {name: server.loads() - loads_before[name] for name, server in servers.items()}
    ok = [s for s in steps if s["status"] == 200]
    return {
        "label": label,
        "gateway": gateway,
        "steps": steps,
        "summary": {
            "requests": len(steps),
            "ok": len(ok),
            "failed": len(steps) - len(ok),
            "oom": sum(s["oom"] for s in steps),
            "offloaded_models": sorted(f"{b}:{m}" for b, m in watch.offloaded),
            "runner_starts": starts,
            "max_resident": watch.max_resident,
            "held_by": {name: sorted(models) for name, models in watch.seen.items()},
            "served_by": served_by,
            "peak_used_gib": peak / GIB,
            "latency_ok": summary([s["latency_s"] for s in ok]),
            "wall_s": wall,
            "gateway": snap,
        },
    }


def phase_shared(ctx: Ctx) -> None:
    names = sorted(n for n in ctx.models if n in NEEDS["shared"])
    traces = [churn_trace(names, ctx.args.churn_steps, seed=21 + c) for c in range(2)]
    homes = {name: rendezvous_home(name) for name in names}
    ctx.say(f"shared: homes {homes}; traces {traces}")
    runs = []
    passes = [("direct", False), ("gateway", True)]
    for label, gateway in passes[ctx.args.shared_from :]:
        if ctx.left() < 60:
            ctx.say(f"shared: no time for {label}")
            break
        runs.append(run_shared(ctx, label, traces, gateway=gateway))
        ctx.say(f"shared {label}: {json.dumps(runs[-1]['summary'], default=str)}")
        ctx.write(
            "shared", {"traces": traces, "homes": homes, "models": ctx.models, "runs": runs, "usable": ctx.args.usable}
        )


# -- (c) conversations over two servers on one card: conversation affinity ---------------------------------

# Words that are one token each in the generator's vocabulary: a text of n words is n tokens.
ONE_TOKEN_WORDS = ("Why", "is", "the", "sky", "blue", "Hello", "hello", "world", "weather", "Paris", "What")


class _ServedBy(logging.Handler):
    """The backend of each request id, from the gateway's access-log records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.backend: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "ollama_asgi", None)
        if isinstance(fields, dict) and fields.get("backend"):
            self.backend[str(fields.get("request_id"))] = str(fields["backend"])


def stream_chat(url: str, body: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """A streamed chat turn: time to the first chunk with text, the answer, the final chunk, the request id."""
    data = json.dumps({**body, "stream": True}).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    started = now()
    first: float | None = None
    text: list[str] = []
    last: dict[str, Any] = {}
    request_id = ""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, request_id = response.status, response.headers.get("x-request-id", "")
            for line in response:
                if not line.strip():
                    continue
                chunk = json.loads(line)
                piece = (chunk.get("message") or {}).get("content") or ""
                if first is None and piece:
                    first = now() - started
                text.append(piece)
                last = chunk
    except urllib.error.HTTPError as exc:
        status, last = exc.code, {"error": exc.read()[:300].decode(errors="replace")}
    except OSError as exc:
        status, last = 0, {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "status": status,
        "ttft_s": first,
        "total_s": now() - started,
        "answer": "".join(text),
        "final": last,
        "request_id": request_id,
    }


def run_affinity_pass(
    ctx: Ctx, label: str, seed: int, model: str, targets: Callable[[int, int], str], served: _ServedBy | None
) -> list[dict[str, Any]]:
    """``--conversations`` conversations at once, each a system prompt and ``--turns`` turns; the
    lengths and pauses are the same in every pass, the words of each pass its own (no pass finds
    another's prefix cached). ``targets(conversation, turn)`` is the base URL of that turn."""
    args = ctx.args
    pauses = random.Random(7)
    think = [
        [pauses.uniform(0.0, 0.5)] + [pauses.uniform(0.3, 2.0) for _ in range(args.turns - 1)]
        for _ in range(args.conversations)
    ]
    rows: list[dict[str, Any]] = []

    def converse(c: int) -> None:
        rng = random.Random(f"{seed}-{c}")

        def words(n: int) -> str:
            return " ".join(rng.choice(ONE_TOKEN_WORDS) for _ in range(n))

        messages = [{"role": "system", "content": words(args.system_words)}]
        for n in range(args.turns):
            time.sleep(think[c][n])
            if ctx.left() < 20:
                return
            messages.append({"role": "user", "content": words(args.user_words)})
            base = targets(c, n)
            body = {"model": model, "messages": messages, "options": {"num_ctx": args.num_ctx, "num_predict": 8}}
            row = stream_chat(base + "/api/chat", body)
            final = row.pop("final")
            messages.append({"role": "assistant", "content": row.pop("answer")})
            row.update(
                pass_label=label,
                seed=seed,
                conversation=c,
                turn=n + 1,
                target=base,
                prompt_eval_count=final.get("prompt_eval_count"),
                prompt_eval_s=(final.get("prompt_eval_duration") or 0) / 1e9,
                error=final.get("error"),
            )
            rows.append(row)

    threads = [threading.Thread(target=converse, args=(c,)) for c in range(args.conversations)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for row in rows:
        row["backend"] = served.backend.get(row["request_id"], "?") if served else row["target"]
    return rows


def affinity_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == 200 and r["ttft_s"] is not None]
    by_turn = {(r["seed"], r["conversation"], r["turn"]): r for r in ok}  # a pass's own conversations
    later = [r for r in ok if r["turn"] >= 2]
    moved = sum(
        1
        for r in later
        if (before := by_turn.get((r["seed"], r["conversation"], r["turn"] - 1))) is not None
        and before["backend"] != r["backend"]
    )
    return {
        "turns": len(rows),
        "failed": len(rows) - len(ok),
        "later_turns": len(later),
        "moved": moved,
        "ttft_later": summary([r["ttft_s"] for r in later]),
        "prompt_eval_later": summary([r["prompt_eval_s"] for r in later]),
        "prompt_eval_total_s": sum(r["prompt_eval_s"] for r in later),
        "ttft_first": summary([r["ttft_s"] for r in ok if r["turn"] == 1]),
        "prompt_eval_count_mean": statistics.fmean(r["prompt_eval_count"] or 0 for r in later) if later else None,
    }


def phase_affinity(ctx: Ctx) -> None:
    """Two Ollama servers on one card, each holding a copy of one model; conversations through one
    gateway with ``conversation_affinity`` on and off, and directly with each turn sent to the next
    server in turn (a round-robin balancer); passes paired (on, off, direct, direct, off, on)."""
    args = ctx.args
    model = NEEDS["affinity"][0]
    parallel = str(args.parallel)
    with (
        ollama(ctx, "affinity-one", OLLAMA_NUM_PARALLEL=parallel) as server_a,
        ollama(ctx, "affinity-two", OLLAMA_NUM_PARALLEL=parallel) as server_b,
    ):
        servers = (server_a, server_b)
        for server in servers:  # a copy on each, as spill or an operator would leave it
            status, answer, seconds = post(
                server.url + "/api/generate", {"model": model, "options": {"num_ctx": args.num_ctx}}
            )
            ctx.say(f"affinity: {model} loaded on {server.url} in {seconds:.1f}s ({status})")
        from ollama_asgi.specs import BackendSpec

        backends = tuple(BackendSpec(server.url, name) for name, server in zip(SHARED_BACKENDS, servers, strict=True))
        served = _ServedBy()
        access = logging.getLogger("ollama_asgi.access")
        access.setLevel(logging.INFO)
        access.addHandler(served)
        gateways = {
            on: Gateway(
                server_a.url,
                upstreams=tuple(b.url for b in backends),
                backends=backends,
                nvml=ctx.gpu,
                gpu_devices=(0,),
                parallel=args.parallel,
                max_queue=64,
                queue_timeout=120.0,
                ps_interval=1.0,
                num_ctx_buckets=(args.num_ctx,),
                default_num_ctx=args.num_ctx,
                conversation_affinity=on,
            )
            for on in (True, False)
        }
        time.sleep(3)  # each gateway's /api/ps poll sees the model on both servers
        urls = {b.url: b.name for b in backends}
        loads_before = sum(server.loads() for server in servers)
        runs: list[dict[str, Any]] = []
        order = ["on", "off", "direct", "direct", "off", "on"]
        try:
            for i, label in enumerate(order):
                if ctx.left() < 60:
                    ctx.say(f"affinity: no time for pass {i + 1} ({label})")
                    break
                if label == "direct":
                    rows = run_affinity_pass(ctx, label, 100 + i, model, lambda c, n: servers[(c + n) % 2].url, None)
                    for row in rows:
                        row["backend"] = urls.get(row["backend"], row["backend"])
                else:
                    gw = gateways[label == "on"]
                    rows = run_affinity_pass(ctx, label, 100 + i, model, lambda c, n, gw=gw: gw.url, served)
                runs.append({"pass": i + 1, "label": label, "rows": rows, "summary": affinity_summary(rows)})
                ctx.say(f"affinity pass {i + 1} {label}: {json.dumps(runs[-1]['summary'], default=str)}")
                totals = {
                    name: affinity_summary([r for run in runs if run["label"] == name for r in run["rows"]])
                    for name in ("on", "off", "direct")
                    if any(run["label"] == name for run in runs)
                }
                ctx.write(
                    "affinity",
                    {
                        "model": model,
                        "parallel": args.parallel,
                        "num_ctx": args.num_ctx,
                        "conversations": args.conversations,
                        "turns": args.turns,
                        "system_words": args.system_words,
                        "user_words": args.user_words,
                        "runner_starts_during_passes": sum(server.loads() for server in servers) - loads_before,
                        "totals": totals,
                        "runs": runs,
                    },
                )
        finally:
            access.removeHandler(served)
            access.setLevel(logging.ERROR)
            for gw in gateways.values():
                gw.stop()


# -- the ballast: another process's share of the card ----------------------------------------------------


def ballast(args: argparse.Namespace) -> None:
    import torch

    probes: dict[str, Any] = {}
    free, total = torch.cuda.mem_get_info(0)
    probes["before_ballast_free_gib"] = free / GIB
    probes["total_gib"] = total / GIB
    for pinned in (True, False):  # the host-to-device floor, 1 GiB
        host = torch.empty(GIB, dtype=torch.uint8, pin_memory=pinned)
        host.fill_(1)
        dev = torch.empty(GIB, dtype=torch.uint8, device="cuda")
        dev.copy_(host, non_blocking=pinned)
        torch.cuda.synchronize()
        best = 0.0
        for _ in range(3):
            started = now()
            dev.copy_(host, non_blocking=pinned)
            torch.cuda.synchronize()
            best = max(best, GIB / (now() - started) / 1e9)
        probes["h2d_pinned_gbps" if pinned else "h2d_pageable_gbps"] = best
        del host, dev
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(0)
    hold = max(0, free - int(args.leave_gib * GIB))
    block = torch.empty(hold, dtype=torch.uint8, device="cuda") if hold else None
    torch.cuda.synchronize()
    free_after, _ = torch.cuda.mem_get_info(0)
    probes.update(ballast_gib=hold / GIB, free_after_ballast_gib=free_after / GIB, torch=torch.__version__)
    Path(args.probe_out).write_text(json.dumps(probes, indent=1))
    print(json.dumps(probes), flush=True)
    _HELD.append(block)
    while True:
        time.sleep(3600)


_HELD: list[Any] = []


# -- main ------------------------------------------------------------------------------------------------

PHASES: dict[str, Callable[[Ctx], None]] = {
    "loads": phase_loads,
    "churn": phase_churn,
    "coldstart": phase_coldstart,
    "overload": phase_overload,
    "prefix": phase_prefix,
    "shared": phase_shared,
    "affinity": phase_affinity,
}
NEEDS = {
    "loads": list(SHAPES),
    "churn": list(SHAPES),
    "coldstart": ["llama3b", "llama8b", "qwen7b"],
    "overload": ["llama8b"],
    "prefix": ["llama8b"],
    "shared": ["llama3b", "phi4b", "llama8b", "qwen14b"],
    "affinity": ["llama8b"],
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("ballast", help="hold all but --leave-gib of GPU 0 until killed")
    b.add_argument("--leave-gib", type=float, default=20.0)
    b.add_argument("--probe-out", default="ballast.json")
    r = sub.add_parser("run", help="make the models and run phases")
    r.add_argument("phases", nargs="+", choices=list(PHASES))
    r.add_argument("--models-only", action="store_true", help="make the phases' models and stop")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--store", type=Path, default=Path("/tmp/ollama-bench-models"))
    r.add_argument("--binary", default=os.environ.get("OLLAMA_BIN", "ollama"))
    r.add_argument("--cpu", action="store_true", help="toy model sizes, no GPU (a dry run)")
    r.add_argument("--deadline", type=float, default=560.0, help="seconds this run may take in all")
    r.add_argument("--num-ctx", type=int, default=4096)
    r.add_argument("--usable", type=float, default=None, help="GiB left to models (recorded)")
    r.add_argument("--churn-steps", type=int, default=12)
    r.add_argument("--cycles", type=int, default=4)
    r.add_argument("--cycle", default="llama3b,llama8b,qwen7b", help="the coldstart pattern, models in turn")
    r.add_argument("--think", type=float, default=4.0)
    r.add_argument("--parallel", type=int, default=4)
    r.add_argument("--window", type=float, default=15.0)
    r.add_argument("--capacity-s", type=float, default=8.0)
    r.add_argument("--slo", type=float, default=2.0)
    r.add_argument("--max-queue", type=int, default=8)
    r.add_argument("--queue-timeout", type=float, default=2.0)
    r.add_argument("--request-timeout", type=float, default=120.0)
    r.add_argument("--system-chars", type=int, default=3000)
    r.add_argument("--prefix-requests", type=int, default=4)
    r.add_argument("--ollama-env", action="append", default=[], metavar="KEY=VALUE", help="for every server")
    r.add_argument("--budget-gib", type=float, default=None, help="the gateway's vram_budget without NVML")
    r.add_argument("--models", default=None, help="the models of loads, churn and shared (default: each phase's own)")
    r.add_argument("--load-models", default=None, help="the models of loads (default: --models)")
    r.add_argument("--shared-from", type=int, default=0, help="skip the first N passes of shared")
    r.add_argument("--affinity-model", default=None, help="the model of affinity (default llama8b)")
    r.add_argument("--conversations", type=int, default=8, help="affinity: conversations at once")
    r.add_argument("--turns", type=int, default=8, help="affinity: turns of each conversation")
    r.add_argument("--system-words", type=int, default=2500, help="affinity: system prompt, in tokens")
    r.add_argument("--user-words", type=int, default=200, help="affinity: each question, in tokens")
    args = parser.parse_args(argv)
    if args.command == "ballast":
        ballast(args)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("ollama_asgi.access").setLevel(logging.ERROR)  # one line per request: too many here
    if args.budget_gib:
        GUARD_BUDGET.append(int(args.budget_gib * GIB))
    args.store.mkdir(parents=True, exist_ok=True)
    memory = Memory()
    args.baseline_used = memory.read()[0] if memory.handle is not None else None
    ctx = Ctx(args=args, out=args.out, store=args.store, binary=args.binary, gpu=not args.cpu)
    failed = 0
    try:
        NEEDS["coldstart"] = args.cycle.split(",")
        if args.models:
            for phase in ("loads", "churn", "shared"):
                NEEDS[phase] = args.models.split(",")
        if args.load_models:
            NEEDS["loads"] = args.load_models.split(",")
        if args.affinity_model:
            NEEDS["affinity"] = [args.affinity_model]
        needed = sorted({n for p in args.phases for n in NEEDS[p]}, key=list(SHAPES).index)
        make_models(ctx, needed)
        ctx.models = {n: ctx.models[n] for n in needed}
        if args.models_only:
            return 0
        for phase in args.phases:
            if ctx.left() < 30:
                ctx.say(f"{phase}: skipped, out of time")
                continue
            ctx.say(f"== {phase}")
            try:
                PHASES[phase](ctx)
            except Exception:
                failed += 1
                ctx.say(f"{phase} failed:\n{traceback.format_exc()}")
    finally:
        label = "models" if args.models_only else "-".join(args.phases)
        (args.out / f"log-{label}.txt").write_text("\n".join(ctx.lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
