"""Workers sharing Redis under ordinary load: ``python -m bench.redis_workers [--seconds S] [--rounds R]``.

One, two and four ``ollama-asgi serve`` processes share one redis-server (started here on a free
port) in front of the fast emulator, with enough slots that nothing queues (``parallel``); one
worker without Redis runs beside them for reference. 64 closed-loop clients are spread evenly over
the workers' ports. Targets are interleaved round by round, so each sees the same machine.

On a machine with cores to spare, ``--emulators K`` gives worker *i* emulator *i mod K* of its own and
``--load-processes P`` drives the clients from P processes, so that neither the emulator nor the
load generator (each one Python process) is what limits several workers.

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
from concurrent.futures import ProcessPoolExecutor
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


async def _load_clients(clients: list[tuple[str, int]], seconds: float) -> tuple[int, int, float]:
    """Closed loops of (URL, clients) at once in this process: answers, failures, the measured window."""
    headers = {"Authorization": f"Bearer {_KEY}", "Content-Type": "application/json"}
    results = await asyncio.gather(
        *(
            closed_loop(Request(url + "/api/chat", _BODY, headers), concurrency=share, seconds=seconds, warmup=1.0)
            for url, share in clients
            if share
        )
    )
    return sum(r.requests for r in results), sum(r.errors for r in results), max(r.seconds for r in results)


def _load_part(clients: list[tuple[str, int]], seconds: float) -> tuple[int, int, float]:
    return asyncio.run(_load_clients(clients, seconds))


def _load(urls: list[str], concurrency: int, seconds: float, processes: int = 1) -> tuple[int, int, float]:
    """``concurrency`` clients spread evenly over ``urls``, driven from ``processes`` processes."""
    share = concurrency // len(urls)
    if processes <= 1:
        return asyncio.run(_load_clients([(url, share) for url in urls], seconds))
    parts: list[list[tuple[str, int]]] = [[] for _ in range(processes)]
    for u, url in enumerate(urls):  # each URL's clients dealt over the processes
        for p in range(processes):
            count = share // processes + (1 if p < share % processes else 0)
            parts[(p + u) % processes].append((url, count))
    with ProcessPoolExecutor(processes) as pool:
        results = list(pool.map(_load_part, parts, [seconds] * processes))
    return sum(r[0] for r in results), sum(r[1] for r in results), max(r[2] for r in results)


def _run(target: Target, emulators: list[str], redis_url: str, args: argparse.Namespace, workdir: Path) -> None:
    env = {
        "OLLAMA_ASGI_API_KEYS": f"bench={_KEY}",
        "OLLAMA_ASGI_PARALLEL": str(args.parallel),
        "OLLAMA_ASGI_MAX_QUEUE": "1024",
    }
    if target.redis:
        env["OLLAMA_ASGI_REDIS_URL"] = redis_url
    log = workdir / f"{target.name}.log"
    before = log.read_text() if log.exists() else ""
    gateways = [
        _gateway({**env, "OLLAMA_ASGI_UPSTREAMS": emulators[i % len(emulators)]}, log, target.package_path)
        for i in range(target.workers)
    ]
    try:
        pids = [pid for process, _ in gateways for pid in tree(process.pid)]
        urls = [url for _, url in gateways]
        _load(urls, args.concurrency, 1.0, args.load_processes)  # warm: models, connections
        cpu_before = cpu_seconds(pids)
        answered, failed, seconds = _load(urls, args.concurrency, args.seconds, args.load_processes)
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
    parser.add_argument("--emulators", type=int, default=1, help="emulator processes; worker i uses i mod K")
    parser.add_argument("--load-processes", type=int, default=1, help="processes driving the clients")
    parser.add_argument("--workers", default="1,2,4", help="the worker counts sharing Redis")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-workers-"))
    counts = [int(n) for n in args.workers.split(",")]
    targets = [Target("1 worker, no Redis", 1, False)] + [Target(f"{n} with Redis", n, True) for n in counts]
    if 2 in counts:  # what a second worker gains without shared state, on this machine
        targets.insert(1, Target("2 workers, no Redis", 2, False))
    if args.baseline:
        targets += [Target(f"{n} with Redis (baseline)", n, True, args.baseline) for n in (1, 2)]
    emulators = [
        python_server(f"emulator{i}", "emulator", free_port(), "--parallel", "512", log=workdir / f"emulator{i}.log")
        for i in range(args.emulators)
    ]
    for emulator in emulators:
        emulator.launch()
    redis_port = free_port()
    redis = _redis(redis_port, workdir)
    try:
        for emulator in emulators:
            emulator.wait_ready()
        for _ in range(args.rounds):
            for target in targets:
                _run(target, [e.url for e in emulators], f"redis://127.0.0.1:{redis_port}/0", args, workdir)
                print(f"{target.name}: {target.rates[-1]:.0f}/s", file=sys.stderr)
    finally:
        redis.terminate()
        redis.wait(10)
        for emulator in emulators:
            emulator.stop()
    rate = {t.name: statistics.median(t.rates) for t in targets}
    one = rate["1 with Redis"]
    report: dict[str, Any] = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "emulators": args.emulators,
        "load_processes": args.load_processes,
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
