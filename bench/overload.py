"""Admission under load: added latency by concurrency, and overload with and without the gateway.

Usage: ``python -m bench.overload [--seconds 8]``; prints Markdown tables and writes
``bench/results/overload.json``.

1. *Admission latency*: small non-streamed requests through the gateway (``ollama-asgi serve``
   with enough slots) and directly to a fast emulator, at concurrency 1, 64 and 256, interleaved;
   the difference of the medians is what the gateway adds (auth, admission, num_ctx, relay).
2. *Overload*: an emulator with 2 slots and about 0.25 s per answer (capacity ≈ 8 requests/s)
   receives open-loop arrivals at 2× and 10× its capacity for a few seconds, directly (Ollama queues
   without bound) and through the gateway (``parallel=2``, ``max_queue=16``, ``queue_timeout=5s``).
   Goodput is answers that took at most 10 s, per second of the whole run (until the last answer);
   p50/p99 are over those answers. "refused" counts 503s and requests that timed out (30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ollama_asgi.testing import EmulatorServer

API_KEY = "bench-overload-key"
BODY = {"model": "qwen2.5:0.5b", "prompt": "x", "stream": False, "options": {"num_predict": 1}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gateway(upstream: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_ASGI_")}
    environ.update({"OLLAMA_ASGI_UPSTREAMS": upstream, "OLLAMA_ASGI_API_KEYS": f"bench={API_KEY}", **env})
    cmd = [sys.executable, "-m", "ollama_asgi.cli", "serve", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(cmd, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/llm"
    for _ in range(400):
        try:
            httpx.get(url + "/_gateway/health", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("gateway did not start")


async def _closed_loop(url: str, concurrency: int, count: int) -> list[float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60, limits=limits) as client:
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                try:
                    response = await client.post(url + "/api/generate", json=BODY)
                except httpx.HTTPError:
                    continue  # counted by its absence; the tables say how many answered
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def admission_latency(rounds: int = 2) -> list[dict[str, object]]:
    with EmulatorServer(parallel=512, max_queue=4096) as emulator:
        process, gateway = _gateway(emulator.url, OLLAMA_ASGI_PARALLEL="512", OLLAMA_ASGI_MAX_QUEUE="4096")
        try:
            asyncio.run(_closed_loop(gateway, 4, 40))  # warm both paths (model load, connections)
            rows = []
            for concurrency in (1, 64, 256):
                count = 200 if concurrency == 1 else concurrency * 6
                direct, through = [], []
                for _ in range(rounds):  # interleaved, so drift lands on both
                    direct.append(statistics.median(asyncio.run(_closed_loop(emulator.url, concurrency, count))))
                    through.append(statistics.median(asyncio.run(_closed_loop(gateway, concurrency, count))))
                d, g = statistics.median(direct) * 1000, statistics.median(through) * 1000
                rows.append(
                    {
                        "concurrency": concurrency,
                        "direct_p50_ms": round(d, 2),
                        "gateway_p50_ms": round(g, 2),
                        "added_ms": round(g - d, 2),
                    }
                )
            return rows
        finally:
            process.terminate()
            process.wait(10)


async def _open_loop(url: str, rate: float, seconds: float) -> dict[str, float]:
    ok: list[float] = []
    refused = 0
    tasks = []
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30, limits=limits) as client:

        async def one() -> None:
            nonlocal refused
            started = time.perf_counter()
            try:
                response = await client.post(url + "/api/generate", json={**BODY, "options": {"num_predict": 5}})
            except httpx.HTTPError:
                refused += 1
                return
            if response.status_code == 200:
                ok.append(time.perf_counter() - started)
            else:
                refused += 1

        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds:
            tasks.append(asyncio.ensure_future(one()))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    good = [t for t in ok if t <= 10.0]
    good.sort()
    return {
        "arrivals": n,
        "answered": len(ok),
        "refused": refused,
        "wall_s": round(wall, 2),
        "goodput_per_s": round(len(good) / wall, 2),
        "p50_s": round(statistics.median(good), 3) if good else float("nan"),
        "p99_s": round(good[int(0.99 * (len(good) - 1))], 3) if good else float("nan"),
    }


def overload(seconds: float) -> list[dict[str, object]]:
    rows = []
    for factor in (2, 10):
        for target in ("direct", "gateway"):
            with EmulatorServer(parallel=2, max_queue=4096, token_interval=0.05) as emulator:
                httpx.post(emulator.url + "/api/generate", json={"model": BODY["model"]}, timeout=30)  # load it
                capacity = 2 / (5 * 0.05)  # 2 slots, 5 tokens at 50 ms each
                if target == "direct":
                    result = asyncio.run(_open_loop(emulator.url, capacity * factor, seconds))
                else:
                    process, url = _gateway(
                        emulator.url,
                        OLLAMA_ASGI_PARALLEL="2",
                        OLLAMA_ASGI_MAX_QUEUE="16",
                        OLLAMA_ASGI_QUEUE_TIMEOUT="5s",
                    )
                    try:
                        asyncio.run(_closed_loop(url, 1, 3))
                        result = asyncio.run(_open_loop(url, capacity * factor, seconds))
                    finally:
                        process.terminate()
                        process.wait(10)
            rows.append({"load": f"{factor}x", "target": target, "capacity_per_s": capacity, **result})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    latency = admission_latency()
    loaded = overload(args.seconds)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "overload.json").write_text(json.dumps({"admission_latency": latency, "overload": loaded}, indent=2))
    print("| concurrency | direct p50 ms | gateway p50 ms | added ms |\n|---|---|---|---|")
    for row in latency:
        print(f"| {row['concurrency']} | {row['direct_p50_ms']} | {row['gateway_p50_ms']} | {row['added_ms']} |")
    print()
    print("| load | target | arrivals | answered | refused or timed out | run s | goodput/s (≤10 s) | p50 s | p99 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in loaded:
        print(
            f"| {row['load']} | {row['target']} | {row['arrivals']} | {row['answered']} | {row['refused']} | "
            f"{row['wall_s']} | {row['goodput_per_s']} | {row['p50_s']} | {row['p99_s']} |"
        )


if __name__ == "__main__":
    main()
