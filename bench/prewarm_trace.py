"""Pre-warming on a mixed, interleaved multi-client trace, beside Bélády's offline optimum.

Usage: ``[OLLAMA_BIN=/path/to/ollama] python -m bench.prewarm_trace [--skip-emulator] [--before REF]``;
prints a Markdown table and writes ``bench/results/prewarm_trace.json``.

Several principals (one API key each) follow patterns of their own, a pipeline each (embed, then
answer; plan, then act), and one more asks for models at random; their requests arrive on a fixed
schedule and interleave on one backend that holds ``capacity`` models (``max_loaded_models`` in
Ollama and in the gateway). Each trace is replayed through a fresh gateway and a fresh backend:

- ``off``: pre-warming off;
- ``before``: pre-warming on, the gateway as at ``--before`` (transitions learnt per backend from
  the interleaved sequence; a pre-warm may evict an idle model);
- ``on``: pre-warming on, the gateway as at ``--after`` (default ``HEAD``; per principal, free
  memory and an idle loader only).

Loads are the backend's own count (the emulator's, or ``starting runner`` lines in Ollama's log),
pre-warms included; cold requests are the gateway's ``ollama_asgi_cold_requests_total``. Bélády's
optimum is the fewest loads any policy could make for the trace's sequence of models with that
capacity, knowing the future (evict the model whose next use is furthest away); no pre-warming can
load less, since a load made early is still a load.

The emulator loads at the rate measured on an H100 from local disk (``LOAD_PROFILE_H100_COLD``);
with ``OLLAMA_BIN`` the same patterns run against a real Ollama and the suite's fixture models.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.procs import free_port, stop_process
from ollama_asgi.testing.real import die_with_parent

ADMIN_KEY = "bench-prewarm-admin"
EMBED_MODELS = {"nomic-embed-text:latest", "all-minilm:latest"}


@dataclass(frozen=True)
class Workload:
    """Who asks for what: each principal's cycle of models, and the models noise picks from."""

    patterns: dict[str, tuple[str, ...]]
    models: tuple[str, ...]
    capacity: int


EMULATOR_WORKLOAD = Workload(
    patterns={
        "rag": ("nomic-embed-text:latest", "llama3.2:latest"),
        "agent": ("qwen3:0.6b", "qwen2.5:0.5b"),
        "search": ("all-minilm:latest", "qwen2.5:0.5b"),
    },
    models=("nomic-embed-text:latest", "llama3.2:latest", "qwen3:0.6b", "qwen2.5:0.5b", "all-minilm:latest"),
    capacity=3,
)
REAL_FIXTURES = ("tiny", "loop", "tools", "tools2")
REAL_WORKLOAD = Workload(
    patterns={
        "rag": ("tiny-1t:latest", "tools-1t:latest"),
        "agent": ("tools2-1t:latest", "loop-1t:latest"),
        "search": ("tiny-1t:latest", "loop-1t:latest"),
    },
    models=tuple(f"{name}-1t:latest" for name in REAL_FIXTURES),
    capacity=2,
)


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the start
    principal: str
    model: str


def make_trace(workload: Workload, *, rounds: int, gap: float, noise: float, seed: int = 21) -> list[Arrival]:
    """Each patterned principal asks every ``gap`` s (±25%) for the next model of its cycle, a random
    one with probability ``noise``; a ``noise`` principal asks for random models as often."""
    rng = random.Random(seed)
    arrivals: list[Arrival] = []
    names = [*workload.patterns, "noise"]
    for index, principal in enumerate(names):
        at = gap * index / len(names)
        cycle = workload.patterns.get(principal)
        for step in range(rounds):
            if cycle is not None and rng.random() >= noise:
                model = cycle[step % len(cycle)]
            else:
                model = rng.choice(workload.models)
            arrivals.append(Arrival(round(at, 3), principal, model))
            at += gap * rng.uniform(0.75, 1.25)
    arrivals.sort(key=lambda a: a.at)
    return arrivals


def belady(sequence: Sequence[str], capacity: int) -> int:
    """Loads made by Bélády's offline optimum: on a miss with no room, evict the loaded model whose
    next use is furthest in the future (or never comes)."""
    upcoming: dict[str, list[int]] = {}
    for position in range(len(sequence) - 1, -1, -1):
        upcoming.setdefault(sequence[position], []).append(position)  # reversed: the next use is last
    loaded: set[str] = set()
    loads = 0
    for model in sequence:
        upcoming[model].pop()
        if model in loaded:
            continue
        loads += 1
        if len(loaded) >= capacity:

            def next_use(name: str) -> float:
                uses = upcoming[name]
                return uses[-1] if uses else float("inf")

            loaded.remove(max(sorted(loaded), key=next_use))
        loaded.add(model)
    return loads


def lru(sequence: Sequence[str], capacity: int) -> int:
    """Loads made by evicting the least recently used model (what a cache without foresight does)."""
    loaded: list[str] = []
    loads = 0
    for model in sequence:
        if model in loaded:
            loaded.remove(model)
        else:
            loads += 1
            if len(loaded) >= capacity:
                loaded.pop(0)
        loaded.append(model)
    return loads


# -- replay -------------------------------------------------------------------------------------------


@dataclass
class Sent:
    principal: str
    model: str
    at: float
    status: int = 0
    latency: float = 0.0  # from the scheduled arrival to the end of the answer
    retries: int = 0


def _body(model: str) -> tuple[str, dict[str, object]]:
    if model in EMBED_MODELS:
        return "/api/embed", {"model": model, "input": "a document to embed"}
    return "/api/chat", {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": False,
        "options": {"num_predict": 8},
    }


async def replay(base: str, trace: list[Arrival], keys: dict[str, str]) -> list[Sent]:
    sents = [Sent(a.principal, a.model, a.at) for a in trace]
    limits = httpx.Limits(max_connections=len(trace) + 8, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        started = time.perf_counter()

        async def one(sent: Sent) -> None:
            await asyncio.sleep(max(0.0, started + sent.at - time.perf_counter()))
            path, body = _body(sent.model)
            headers = {"Authorization": f"Bearer {keys[sent.principal]}"}
            while True:
                answer = await client.post(path, json=body, headers=headers)
                if answer.status_code != 503 or sent.retries >= 30:
                    break
                sent.retries += 1
                await asyncio.sleep(float(answer.headers.get("retry-after", "1")))
            sent.status = answer.status_code
            sent.latency = time.perf_counter() - started - sent.at

        await asyncio.gather(*(one(s) for s in sents))
    return sents


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def start_gateway(
    upstream: str, keys: dict[str, str], capacity: int, *, prewarm: bool, package: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """``ollama-asgi serve`` on a free port; ``package``: a directory whose ``ollama_asgi`` it runs."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_ASGI_")}
    env.update(
        OLLAMA_ASGI_UPSTREAMS=upstream,
        OLLAMA_ASGI_API_KEYS=",".join(f"{who}={key}" for who, key in keys.items()),
        OLLAMA_ASGI_ADMIN_API_KEYS=f"ops={ADMIN_KEY}",
        OLLAMA_ASGI_MAX_LOADED_MODELS=str(capacity),
        OLLAMA_ASGI_PREWARM="true" if prewarm else "false",
        OLLAMA_ASGI_NVML="false",
        OLLAMA_ASGI_MAX_QUEUE="1000",
        OLLAMA_ASGI_QUEUE_TIMEOUT="600",
        OLLAMA_ASGI_LOAD_WAIT_TIMEOUT="600",
    )
    cmd = [sys.executable, "-m", "ollama_asgi.cli", "serve", "--port", str(port), "--log-level", "warning"]
    # ``-m`` puts the working directory first on sys.path: run there, and that copy is imported.
    process = subprocess.Popen(
        cmd, cwd=package, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
    )
    url = f"http://127.0.0.1:{port}/llm"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(url + "/_gateway/health", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.05)
    stop_process(process)
    raise RuntimeError("the gateway did not start")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run_one(
    label: str,
    upstream: str,
    trace: list[Arrival],
    capacity: int,
    *,
    prewarm: bool,
    package: Path,
    loads: Any,
    own_evictions: Any = None,
) -> dict[str, Any]:
    keys = {who: f"bench-prewarm-{who}" for who in sorted({a.principal for a in trace})}
    gateway, base = start_gateway(upstream, keys, capacity, prewarm=prewarm, package=package)
    try:
        before = loads()
        started = time.perf_counter()
        sents = asyncio.run(replay(base, trace, keys))
        wall = time.perf_counter() - started
        made = loads() - before
        metrics = httpx.get(base + "/_gateway/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    finally:
        stop_process(gateway)
    latencies = [s.latency for s in sents]
    optimum = belady([a.model for a in trace], capacity)
    return {
        "run": label,
        "requests": len(sents),
        "served": sum(1 for s in sents if s.status == 200),
        "retried": sum(s.retries for s in sents),
        "loads": made,
        "cold_requests": int(_metric(metrics, "ollama_asgi_cold_requests_total")),
        "prewarm_loads": int(_metric(metrics, "ollama_asgi_prewarm_loads_total")),
        "prewarm_hits": int(_metric(metrics, "ollama_asgi_prewarm_hits_total")),
        "gateway_evictions": int(_metric(metrics, "ollama_asgi_model_evictions")),
        "backend_evictions": own_evictions() if own_evictions is not None else None,  # Ollama's own choice
        "belady": optimum,
        "lru": lru([a.model for a in trace], capacity),
        "loads_over_belady": round(made / optimum, 3),
        "p50_s": round(_pct(latencies, 0.5), 3),
        "p99_s": round(_pct(latencies, 0.99), 3),
        "wall_s": round(wall, 1),
        "sent": [asdict(s) for s in sents],
    }


def emulator_runs(trace: list[Arrival], capacity: int, before: Path, after: Path) -> list[dict[str, Any]]:
    from ollama_asgi.testing import EmulatorServer
    from ollama_asgi.testing.gpu import LOAD_PROFILE_H100_COLD

    rows = []
    for label, prewarm, package in (("off", False, after), ("before", True, before), ("on", True, after)):
        with EmulatorServer(
            parallel=2,
            max_loaded_models=capacity,
            vram_bytes=64 * 2**30,
            token_interval=0.01,
            load_base_seconds=LOAD_PROFILE_H100_COLD.base_seconds,
            load_bytes_per_second=LOAD_PROFILE_H100_COLD.bytes_per_second,
        ) as emulator:
            stats = emulator.emulator.stats
            rows.append(
                run_one(
                    f"emulator/{label}",
                    emulator.url,
                    trace,
                    capacity,
                    prewarm=prewarm,
                    package=package,
                    loads=lambda stats=stats: stats.loads + stats.reloads,
                    own_evictions=lambda stats=stats: stats.evictions,
                )
            )
        print(_row(rows[-1]), flush=True)
    return rows


def real_runs(binary: str, trace: list[Arrival], capacity: int, before: Path, after: Path) -> list[dict[str, Any]]:
    from ollama_asgi.testing.real import RealOllama

    rows = []
    with tempfile.TemporaryDirectory(prefix="prewarm-trace-") as tmp:
        models_dir, fixtures_dir = Path(tmp, "models"), Path(tmp, "fixtures")
        for label, prewarm, package in (("off", False, after), ("before", True, before), ("on", True, after)):
            server = RealOllama(
                binary,
                env={"OLLAMA_MAX_LOADED_MODELS": str(capacity), "OLLAMA_KEEP_ALIVE": "30m"},
                models_dir=models_dir,
                fixtures_dir=fixtures_dir,
            )
            server.start()
            try:
                server.create(REAL_FIXTURES)
                for name in REAL_FIXTURES:  # one runner thread each: two shared cores stay responsive
                    body = {"model": f"{name}-1t", "from": name, "parameters": {"num_thread": 1}, "stream": False}
                    status, answer = server.request("POST", "/api/create", body)
                    if status != 200:
                        raise RuntimeError(f"creating {name}-1t failed: {answer}")
                rows.append(
                    run_one(
                        f"ollama/{label}",
                        server.url,
                        trace,
                        capacity,
                        prewarm=prewarm,
                        package=package,
                        loads=server.loads,
                    )
                )
            finally:
                server.stop()
            print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict[str, Any]) -> str:
    return (
        f"| {r['run']} | {r['served']}/{r['requests']} | {r['loads']} | {r['belady']} | {r['loads_over_belady']:.2f} "
        f"| {r['cold_requests']} | {r['prewarm_loads']} | {r['prewarm_hits']} | {r['p50_s']:.3f} | {r['p99_s']:.3f} "
        f"| {r['wall_s']} |"
    )


def main() -> None:
    from bench.run import baseline_copy

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="7474f88", help="git ref (or a directory) of the gateway 'before'")
    parser.add_argument("--after", default="HEAD", help="git ref (or a directory) of the gateway 'off' and 'on'")
    parser.add_argument("--rounds", type=int, default=40, help="requests per principal")
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between one principal's requests")
    parser.add_argument("--noise", type=float, default=0.1, help="share of a patterned principal's random requests")
    parser.add_argument("--skip-emulator", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prewarm_trace.json"))
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    print(
        "| run | served | loads | Bélády | loads / Bélády | cold requests | pre-warms | pre-warm hits | p50 s | p99 s | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="prewarm-before-") as tmp:
        before = baseline_copy(args.before, Path(tmp))
        after = baseline_copy(args.after, Path(tmp))
        if not args.skip_emulator:
            workload = EMULATOR_WORKLOAD
            trace = make_trace(workload, rounds=args.rounds, gap=args.gap, noise=args.noise)
            rows += emulator_runs(trace, workload.capacity, before, after)
        binary = os.environ.get("OLLAMA_BIN")
        if binary and not args.skip_real:
            workload = REAL_WORKLOAD
            trace = make_trace(workload, rounds=args.rounds, gap=args.gap, noise=args.noise)
            rows += real_runs(binary, trace, workload.capacity, before, after)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
