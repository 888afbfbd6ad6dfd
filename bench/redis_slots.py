"""What shared slots cost a worker, without HTTP: ``python -m bench.redis_slots [--baseline DIR]``.

Each worker is a process running ``Admission`` with a ``RedisState`` on one redis-server (started
here): 64 tasks take a slot, yield once and give it back, for ``--seconds``. Run with 1 and 2
workers, with slots to spare (``parallel`` 128: nothing waits) and with 8 slots for the 64 tasks
(most wait, and releases must wake them). Reported: slots taken per second (all workers) and the
workers' CPU microseconds per slot taken, the figure that says what Redis costs a worker.
``--baseline DIR`` runs the same with ``ollama_asgi`` imported from DIR, interleaved run by run.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.procs import free_port

_WORKER = r"""
import asyncio, sys, time
from ollama_asgi.admission import Admission
from ollama_asgi.state.redis import RedisState

async def main(url, prefix, parallel, seconds):
    admission = Admission(parallel=parallel, embed_parallel=None, max_queue=4096, shared=RedisState(url, prefix=prefix))
    b0 = admission.slots_for("b0")
    done = 0
    async def one(stop, count):
        nonlocal done
        while time.monotonic() < stop:
            lease = await admission.admit(b0, kind="generate", principal="u", wait_limit=60)
            await asyncio.sleep(0)
            lease.release()
            if count:
                done += 1
    await asyncio.gather(*(one(time.monotonic() + 1.0, False) for _ in range(64)))  # warm up
    cpu = time.process_time()
    await asyncio.gather(*(one(time.monotonic() + seconds, True) for _ in range(64)))
    cpu = time.process_time() - cpu
    await admission.aclose()
    await admission.shared.aclose()
    print(done, cpu)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


def _run(
    url: str, workers: int, parallel: int, seconds: float, package_path: str | None, run: int
) -> tuple[int, float]:
    env = dict(os.environ)
    if package_path:
        env["PYTHONPATH"] = package_path
    prefix = f"bench{run}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, url, prefix, str(parallel), str(seconds)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            cwd=package_path,  # ``-c`` puts the working directory first on the path
        )
        for _ in range(workers)
    ]
    done, cpu = 0, 0.0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        count, used = out.split()
        done, cpu = done + int(count), cpu + float(used)
    return done, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", default=None, help="a directory holding an earlier ollama_asgi")
    args = parser.parse_args(argv)
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-slots-")
    redis = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    versions = [("current", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    results: dict[tuple[str, int, int], list[tuple[int, float]]] = {}
    run = 0
    try:
        time.sleep(0.3)
        for _ in range(args.rounds):
            for workers in (1, 2):
                for parallel in (128, 8):
                    for version, path in versions:
                        run += 1
                        results.setdefault((version, workers, parallel), []).append(
                            _run(url, workers, parallel, args.seconds, path, run)
                        )
    finally:
        redis.terminate()
        redis.wait(10)
    rows: list[dict[str, Any]] = []
    for (version, workers, parallel), samples in results.items():
        done = sum(d for d, _ in samples)
        cpu = sum(c for _, c in samples)
        rows.append(
            {
                "version": version,
                "workers": workers,
                "parallel": parallel,
                "slots_per_second": round(done / (args.seconds * len(samples)), 1),
                "worker_cpu_us_per_slot": round(1e6 * cpu / max(1, done), 1),
            }
        )
    print(json.dumps({"seconds": args.seconds, "rounds": args.rounds, "cpus": os.cpu_count(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
