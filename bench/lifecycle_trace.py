"""Trace replay on one emulated backend: cold starts and latency, direct to Ollama vs the gateway.

Usage: ``python -m bench.lifecycle_trace [--requests 240]``; prints a Markdown table and writes
``bench/results/lifecycle.json``.

The emulator loads models at the rate measured on an H100 (``LOAD_PROFILE_H100_COLD``: a 2 GB
model takes about 1.5 s) and holds about two of the trace's models at once. The trace mixes a
repeating pipeline (embed → small chat → big chat, the pattern pre-warming learns) with Zipf-random
requests, replayed by 4 clients with a short think time. Directly, Ollama loads and evicts on its
own (and every ``/v1``-style request without ``num_ctx`` asks for the default context); through
the gateway, loads are single-flight, num_ctx is sticky, the VRAM guard picks what to evict and the
next model is pre-warmed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import httpx

from bench.placement_trace import _start_gateway
from ollama_asgi.testing import EmulatorServer
from ollama_asgi.testing.gpu import LOAD_PROFILE_H100_COLD

PIPELINE = ["nomic-embed-text", "qwen2.5:0.5b", "llama3.2"]
OTHERS = ["qwen3:0.6b", "all-minilm"]


def trace(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        if rng.random() < 0.75:
            out.extend(PIPELINE)
        else:
            out.append(rng.choice(OTHERS))
    return out[:n]


def _request(model: str) -> tuple[str, dict[str, object]]:
    if model in ("nomic-embed-text", "all-minilm"):
        return "/api/embed", {"model": model, "input": "a document to embed"}
    return "/api/chat", {
        "model": model,
        "messages": [{"role": "user", "content": "summarise the document"}],
        "stream": False,
        "options": {"num_predict": 8},
    }


async def replay(base: str, requests: list[str], clients: int, think: float, key: str | None) -> list[float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    queue = list(requests)

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            path, body = _request(queue.pop(0))
            started = time.perf_counter()
            for _ in range(30):
                response = await client.post(base + path, json=body)
                if response.status_code != 503:
                    break
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(think)

    async with httpx.AsyncClient(headers=headers, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return latencies


def run(n: int, clients: int, think: float) -> list[dict[str, object]]:
    rows = []
    requests = trace(n)
    for target in ("direct", "gateway"):
        with EmulatorServer(
            parallel=2,
            max_loaded_models=3,
            vram_bytes=int(3.2e9),
            token_interval=0.01,
            **LOAD_PROFILE_H100_COLD.emulator_kwargs(),
        ) as emulator:
            process = None
            base = emulator.url
            key = None
            if target == "gateway":
                process, base = _start_gateway([emulator.url], "affinity", prewarm=True, budget="3GiB")
                key = "bench-placement-key"
            try:
                started = time.perf_counter()
                latencies = asyncio.run(replay(base, requests, clients, think, key))
                wall = time.perf_counter() - started
                cold = emulator.emulator.stats.loads + emulator.emulator.stats.reloads  # each one a request's
                if process is not None:
                    metrics = httpx.get(base + "/_gateway/metrics", timeout=10).text
                    cold = int(
                        sum(
                            float(line.rsplit(" ", 1)[1])
                            for line in metrics.splitlines()
                            if line.startswith("ollama_asgi_cold_requests_total")
                        )
                    )
            finally:
                if process is not None:
                    process.terminate()
                    process.wait(10)
            loads = emulator.emulator.stats.loads + emulator.emulator.stats.reloads
        latencies.sort()
        rows.append(
            {
                "target": target,
                "requests": n,
                "ollama_loads": loads,
                "cold_requests": cold,
                "cold_share": round(cold / n, 3),
                "p50_ms": round(statistics.median(latencies) * 1000, 1),
                "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1),
                "wall_s": round(wall, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--think", type=float, default=0.5)
    args = parser.parse_args()
    rows = run(args.requests, args.clients, args.think)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "lifecycle.json").write_text(json.dumps(rows, indent=2))
    print(
        "| target | requests | loads in Ollama | requests that hit a cold model | cold share | p50 ms | p99 ms | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['target']} | {r['requests']} | {r['ollama_loads']} | {r['cold_requests']} | {r['cold_share']:.1%} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['wall_s']} |"
        )


if __name__ == "__main__":
    main()
