"""Trace replay over three emulated backends: cold loads and latency by placement strategy.

Usage: ``python -m bench.placement_trace [--requests 300] [--concurrency 8]``.

Three emulators with realistic, size-proportional load times and room for about two models each
serve the same Zipf-distributed trace of mixed-size models, once per strategy (model affinity,
round-robin, random), each through a fresh ``ollama-asgi serve`` process. Prints a Markdown table
and writes ``bench/results/placement.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import time
from pathlib import Path

import httpx

from bench.procs import start_gateway_process
from ollama_asgi.testing import EmulatorServer

MODELS = ["qwen2.5:0.5b", "qwen3:0.6b", "llama3.2", "llava:7b", "all-minilm"]
API_KEY = "bench-placement-key"


def trace(n: int, seed: int = 7) -> list[str]:
    """Zipf-like popularity: the first model is asked for most, the last least."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(MODELS))]
    return rng.choices(MODELS, weights=weights, k=n)


def _body(model: str) -> tuple[str, dict[str, object]]:
    if model == "all-minilm":
        return "/api/embed", {"model": model, "input": "trace"}
    return "/api/chat", {
        "model": model,
        "messages": [{"role": "user", "content": "replay this trace"}],
        "stream": False,
        "options": {"num_predict": 8},
    }


def _start_gateway(
    urls: list[str], strategy: str, *, prewarm: bool = False, budget: str = "6GiB"
) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        "OLLAMA_ASGI_UPSTREAMS": ",".join(urls),
        "OLLAMA_ASGI_PLACEMENT": strategy,
        "OLLAMA_ASGI_PARALLEL": "4",
        "OLLAMA_ASGI_MAX_QUEUE": "1000",
        "OLLAMA_ASGI_VRAM_BUDGET": budget,
        "OLLAMA_ASGI_PREWARM": "true" if prewarm else "false",
        "OLLAMA_ASGI_METRICS_ACCESS": "public",
        "OLLAMA_ASGI_API_KEYS": f"bench={API_KEY}",
    }
    return start_gateway_process(env, timeout=20)


async def replay(url: str, requests: list[str], concurrency: int) -> list[float]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for model in requests:
        queue.put_nowait(model)
    latencies: list[float] = []
    failures: list[str] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            path, body = _body(queue.get_nowait())
            started = time.perf_counter()
            for _ in range(20):  # a well-behaved client: honour Retry-After on 503
                response = await client.post(url + path, json=body)
                if response.status_code != 503:
                    break
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures.append(f"{response.status_code} {response.text[:200]}")

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return latencies


def run(n: int, concurrency: int) -> list[dict[str, object]]:
    rows = []
    requests = trace(n)
    for strategy in ("affinity", "round_robin", "random"):
        servers = [
            EmulatorServer(
                parallel=4,
                max_loaded_models=3,
                vram_bytes=6 * 2**30,
                load_base_seconds=0.15,
                load_bytes_per_second=4e9,  # a 2 GB model loads in about half a second
                token_interval=0.004,
            ).start()
            for _ in range(3)
        ]
        process, url = _start_gateway([s.url for s in servers], strategy)
        try:
            started = time.perf_counter()
            latencies = asyncio.run(replay(url, requests, concurrency))
            wall = time.perf_counter() - started
        finally:
            process.terminate()
            process.wait(10)
            loads = sum(s.emulator.stats.loads for s in servers)
            for server in servers:
                server.stop()
        latencies.sort()
        rows.append(
            {
                "strategy": strategy,
                "requests": n,
                "cold_loads": loads,
                "p50_ms": round(statistics.median(latencies) * 1000, 1),
                "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1),
                "wall_s": round(wall, 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    rows = run(args.requests, args.concurrency)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "placement.json").write_text(json.dumps(rows, indent=2))
    print("| strategy | requests | cold loads | p50 ms | p99 ms | wall s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['strategy']} | {row['requests']} | {row['cold_loads']} | {row['p50_ms']} | {row['p99_ms']} | {row['wall_s']} |"
        )


if __name__ == "__main__":
    main()
