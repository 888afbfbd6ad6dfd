"""Load generation: closed loops of N concurrent workers, on wrk (C) when installed or aiohttp.

Every function sends to one target for a bounded time and returns plain numbers: latencies in
microseconds, request counts, errors, and for streams the time to the first chunk, the total time
and the number of chunks (NDJSON lines or SSE events) each answer had.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# Latency percentiles reported for CDF plots (wrk reports its HdrHistogram at these points).
PERCENTILES = (1, 5, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 95, 97.5, 99, 99.5, 99.9)


@dataclass(slots=True)
class Request:
    url: str
    body: bytes
    headers: dict[str, str]
    stream: bool = False
    sse: bool = False


@dataclass(slots=True)
class LoadResult:
    tool: str
    concurrency: int
    seconds: float  # measured window
    requests: int  # completed in the measured window
    errors: int
    latency_us: list[float] = field(default_factory=list)  # percentiles (PERCENTILES) of total time
    mean_us: float = 0.0
    ttfc_us: list[float] = field(default_factory=list)  # percentiles of time to first chunk (streams)
    chunks: int = 0  # chunks received over the whole step, warm-up included
    all_requests: int = 0  # requests completed over the whole step, warm-up included
    samples_us: list[float] = field(default_factory=list)  # a subsample of raw latencies, for CDFs
    error_text: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 4),
            "requests": self.requests,
            "rps": round(self.rps, 2),
            "errors": self.errors,
            "latency_us": [round(v, 1) for v in self.latency_us],
            "mean_us": round(self.mean_us, 1),
            "ttfc_us": [round(v, 1) for v in self.ttfc_us],
            "chunks": self.chunks,
            "all_requests": self.all_requests,
            "samples_us": [round(v, 1) for v in self.samples_us],
            "error_text": self.error_text,
        }


def percentiles(values: list[float], points: tuple[float, ...] = PERCENTILES) -> list[float]:
    if not values:
        return []
    ordered = sorted(values)
    out = []
    for p in points:
        rank = p / 100 * (len(ordered) - 1)
        low = int(rank)
        high = min(low + 1, len(ordered) - 1)
        out.append(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))
    return out


def percentile_at(result_points: list[float], p: float) -> float:
    """The value at percentile ``p`` (one of PERCENTILES) from a result's percentile list."""
    return result_points[PERCENTILES.index(p)] if result_points else float("nan")


def _subsample(values: list[float], limit: int = 2000) -> list[float]:
    if len(values) <= limit:
        return values
    step = len(values) / limit
    return [values[int(i * step)] for i in range(limit)]


def _count_chunks(data: bytes, sse: bool) -> int:
    return data.count(b"\n\n") if sse else data.count(b"\n")


async def closed_loop(
    request: Request, *, concurrency: int, seconds: float, warmup: float = 0.2, limit: float = 30.0
) -> LoadResult:
    """``concurrency`` workers, each sending the next request when its last one is answered."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeouts = aiohttp.ClientTimeout(total=limit)
    latencies: list[float] = []
    ttfcs: list[float] = []
    errors = 0
    chunks = 0
    completed = 0
    error_text = ""
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    measured_end = stop_at

    async with aiohttp.ClientSession(connector=connector, timeout=timeouts, auto_decompress=False) as session:

        async def worker() -> None:
            nonlocal errors, chunks, completed, error_text
            while True:
                began = time.perf_counter()
                if began >= stop_at:
                    return
                first = 0.0
                try:
                    async with session.post(request.url, data=request.body, headers=request.headers) as resp:
                        if request.stream:
                            n = 0
                            tail = b""  # a separator may straddle two reads ("\n" | "\n")
                            async for data in resp.content.iter_any():
                                if not first:
                                    first = time.perf_counter()
                                n += _count_chunks(tail + data, request.sse)
                                tail = (
                                    data[-1:]
                                    if request.sse and data.endswith(b"\n") and not data.endswith(b"\n\n")
                                    else b""
                                )
                            chunks += n
                        else:
                            await resp.read()
                            first = time.perf_counter()
                        ok = resp.status == 200
                        if not ok and not error_text:
                            error_text = f"HTTP {resp.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    ok = False
                    if not error_text:
                        error_text = f"{exc.__class__.__name__}: {exc}"
                end = time.perf_counter()
                completed += 1
                if not ok:
                    errors += 1
                    continue
                if began >= measure_from and end <= stop_at:
                    latencies.append((end - began) * 1e6)
                    ttfcs.append((first - began) * 1e6)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    measured = max(1e-9, min(measured_end, time.perf_counter()) - measure_from)
    return LoadResult(
        tool="aiohttp",
        concurrency=concurrency,
        seconds=measured,
        requests=len(latencies),
        errors=errors,
        latency_us=percentiles(latencies),
        mean_us=sum(latencies) / len(latencies) if latencies else 0.0,
        ttfc_us=percentiles(ttfcs) if request.stream else [],
        chunks=chunks,
        all_requests=completed,
        samples_us=_subsample(latencies),
        error_text=error_text,
    )


# ------------------------------------------------------------------------------------------------- wrk

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
{headers}
local pcts = {{{pcts}}}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write("BENCH_JSON {{")
  io.write(string.format('"requests":%d,"duration_us":%d,"bytes":%d,', summary.requests, summary.duration, summary.bytes))
  io.write(string.format('"errors":%d,', e.connect + e.read + e.write + e.status + e.timeout))
  io.write(string.format('"status_errors":%d,"mean_us":%f,"max_us":%d,"latency_us":[', e.status, latency.mean, latency.max))
  for i, p in ipairs(pcts) do
    if i > 1 then io.write(",") end
    io.write(string.format("%d", latency:percentile(p)))
  end
  io.write("]}}\\n")
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    path = wrk_path()
    if path is None:
        return ""
    out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).split("[")[0].strip().removeprefix("wrk ").strip()


def _lua_string(data: bytes) -> str:
    return json.dumps(data.decode())  # a JSON string literal is a valid Lua string literal for ASCII


def run_wrk(request: Request, *, concurrency: int, seconds: int, timeout: float = 10.0) -> LoadResult:
    """One wrk run (one thread: wrk's own CPU stays small next to the servers on a 2-core box)."""
    path = wrk_path()
    assert path is not None
    headers = "\n".join(
        f"wrk.headers[{_lua_string(k.encode())}] = {_lua_string(v.encode())}" for k, v in request.headers.items()
    )
    script = _WRK_SCRIPT.format(
        body=_lua_string(request.body), headers=headers, pcts=", ".join(str(p) for p in PERCENTILES)
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        script_path = handle.name
    try:
        args = [
            path,
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            f"--timeout={timeout:g}s",
            "-s",
            script_path,
            request.url,
        ]
        out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=seconds + timeout + 10)
    finally:
        os.unlink(script_path)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        return LoadResult("wrk", concurrency, float(seconds), 0, 1, error_text=(out.stderr or out.stdout)[-300:])
    data = json.loads(line[len("BENCH_JSON ") :])
    return LoadResult(
        tool="wrk",
        concurrency=concurrency,
        seconds=data["duration_us"] / 1e6,
        requests=data["requests"] - data["errors"],
        errors=data["errors"],
        latency_us=[float(v) for v in data["latency_us"]],
        mean_us=data["mean_us"],
        all_requests=data["requests"],
        error_text="non-2xx answers" if data["status_errors"] else "",
    )
