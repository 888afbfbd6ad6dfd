"""Workers sharing Redis under ordinary load: ``python -m bench.redis_workers [--seconds S] [--rounds R]``.

One, two and four ``ollama-asgi serve`` processes share one redis-server (started here on a free
port) in front of the fast emulator, with enough slots that nothing queues (``parallel``); one
worker without Redis runs beside them for reference. 64 closed-loop clients are spread evenly over
the workers' ports. Targets are interleaved round by round, so each sees the same machine.

Reported per target: answers per second (the median over rounds), the gateway processes' CPU
seconds per answer, failures, and how many times a worker logged Redis as unavailable (which would
mean it served on local limits for a while). ``--baseline DIR`` runs the same Redis targets with
``ollama_asgi`` imported from DIR as well (a copy of an earlier version), in the same rounds.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import Request, closed_loop
from bench.procs import cpu_seconds, free_port, python_server, start_gateway_process, stop_process, tree
from bench.run import MESSAGES, MODEL

_KEY = "bench-redis-0123456789"
_BODY = json.dumps({"model": MODEL, "messages": MESSAGES, "stream": False}).encode()


@dataclass
class Target:
    name: str
    workers: int
    redis: bool
    package_path: str | None = None
    rates: list[float] = field(default_factory=list)
    cpu_per_answer: list[float] = field(default_factory=list)
    failures: int = 0
    unavailable: int = 0


def _redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian package redis-server)")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    return process


def _gateway(env: dict[str, str], log: Path, package_path: str | None) -> tuple[subprocess.Popen[bytes], str]:
    return start_gateway_process(env, stderr=log.open("ab"), package_path=package_path)


async def _load(urls: list[str], concurrency: int, seconds: float) -> tuple[int, int, float]:
    share = concurrency // len(urls)
    headers = {"Authorization": f"Bearer {_KEY}", "Content-Type": "application/json"}
    results = await asyncio.gather(
        *(
            closed_loop(Request(url + "/api/chat", _BODY, headers), concurrency=share, seconds=seconds, warmup=1.0)
            for url in urls
        )
    )
    return sum(r.requests for r in results), sum(r.errors for r in results), max(r.seconds for r in results)


def _run(target: Target, emulator: str, redis_url: str, args: argparse.Namespace, workdir: Path) -> None:
    env = {
        "OLLAMA_ASGI_UPSTREAMS": emulator,
        "OLLAMA_ASGI_API_KEYS": f"bench={_KEY}",
        "OLLAMA_ASGI_PARALLEL": str(args.parallel),
        "OLLAMA_ASGI_MAX_QUEUE": "1024",
    }
    if target.redis:
        env["OLLAMA_ASGI_REDIS_URL"] = redis_url
    log = workdir / f"{target.name}.log"
    before = log.read_text() if log.exists() else ""
    gateways = [_gateway(env, log, target.package_path) for _ in range(target.workers)]
    try:
        pids = [pid for process, _ in gateways for pid in tree(process.pid)]
        asyncio.run(_load([url for _, url in gateways], args.concurrency, 1.0))  # warm: models, connections
        cpu_before = cpu_seconds(pids)
        answered, failed, seconds = asyncio.run(_load([url for _, url in gateways], args.concurrency, args.seconds))
        cpu = cpu_seconds(pids) - cpu_before
    finally:
        for process, _ in gateways:
            stop_process(process)
    target.rates.append(answered / seconds)
    target.cpu_per_answer.append(cpu / max(1, answered))
    target.failures += failed
    target.unavailable += (log.read_text()[len(before) :]).count("unavailable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=128, help="slots per worker's backend (nothing queues)")
    parser.add_argument("--baseline", default=None, help="a directory holding an earlier ollama_asgi")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-workers-"))
    targets = [Target("1 worker, no Redis", 1, False)] + [Target(f"{n} with Redis", n, True) for n in (1, 2, 4)]
    if args.baseline:
        targets += [Target(f"{n} with Redis (baseline)", n, True, args.baseline) for n in (1, 2)]
    emulator = python_server("emulator", "emulator", free_port(), "--parallel", "512", log=workdir / "emulator.log")
    emulator.launch()
    redis_port = free_port()
    redis = _redis(redis_port, workdir)
    try:
        emulator.wait_ready()
        for _ in range(args.rounds):
            for target in targets:
                _run(target, emulator.url, f"redis://127.0.0.1:{redis_port}/0", args, workdir)
                print(f"{target.name}: {target.rates[-1]:.0f}/s", file=sys.stderr)
    finally:
        redis.terminate()
        redis.wait(10)
        emulator.stop()
    rate = {t.name: statistics.median(t.rates) for t in targets}
    one = rate["1 with Redis"]
    report: dict[str, Any] = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "targets": [
            {
                "name": t.name,
                "answers_per_second": round(rate[t.name], 1),
                "vs_one_with_redis": round(rate[t.name] / one, 3),
                "vs_one_without": round(rate[t.name] / rate["1 worker, no Redis"], 3),
                "gateway_cpu_ms_per_answer": round(1000 * statistics.median(t.cpu_per_answer), 3),
                "failures": t.failures,
                "redis_unavailable_logged": t.unavailable,
            }
            for t in targets
        ],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
