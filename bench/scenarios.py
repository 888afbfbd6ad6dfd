"""The gateway's own behaviours under load, each on fresh servers: memory with many streams held, the
slot refill gap, a cold burst, and how truthful Retry-After is at twice the capacity.

Each scenario starts its own emulator (with the ``/_bench/*`` side door for timestamps and
counters) and its own gateway host, so their state cannot leak into the throughput figures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.gateway_host import ADMIN_KEY, BENCH_KEY
from bench.load import percentiles
from bench.procs import Server, free_port, python_server, stop_all

MODEL = "qwen2.5:0.5b"
COLD_MODEL = "llama3.2:latest"
_AUTH = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class Scale:
    """How big each scenario is; ``tiny`` keeps the code paths alive in the smoke test."""

    rss_levels: tuple[int, ...] = (0, 250, 500, 750, 1000)
    rss_interval: float = 0.25  # seconds between tokens of a held stream
    rss_tokens: int = 60
    refill_seconds: float = 3.0
    burst: int = 100
    overload_seconds: float = 8.0
    retry_interval: float = 0.02  # seconds between tokens of an answer in the Retry-After scenario


FULL = Scale()
TINY = Scale(
    rss_levels=(0, 10, 20),
    rss_interval=0.05,
    rss_tokens=20,
    refill_seconds=0.3,
    burst=10,
    overload_seconds=0.6,
    retry_interval=0.004,
)


def _body(tokens: int, *, stream: bool, model: str = MODEL) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
            "stream": stream,
            "options": {"num_predict": tokens},
        }
    )


def _start(*servers: Server) -> None:
    for server in servers:
        server.launch()
    for server in servers:
        server.wait_ready()


def _stop(*servers: Server) -> None:
    stop_all(list(servers))


async def _get_json(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Any:
    async with session.get(url, headers=headers) as resp:
        return orjson.loads(await resp.read())


# ------------------------------------------------------------------------------------ RSS vs streams


async def _hold_streams(
    url: str, headers: dict[str, str], server: Server, scale: Scale, log: Callable[[str], None]
) -> dict[str, Any]:
    body = _body(scale.rss_tokens, stream=True)
    connector = aiohttp.TCPConnector(limit=0)
    points: list[dict[str, Any]] = []
    errors = 0
    completed = 0
    chunks = 0
    first_seen = 0
    error_text = ""
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        for _ in range(20 if scale is FULL else 3):  # warm the code paths and pools before the baseline
            async with session.post(url, data=_body(2, stream=True), headers=headers) as resp:
                await resp.read()
        await asyncio.sleep(0.5 if scale is FULL else 0.05)
        baseline = server.rss()
        points.append({"streams": 0, "rss": baseline})

        async def one(opened: asyncio.Event) -> None:
            nonlocal errors, completed, chunks, first_seen, error_text
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    n = 0
                    async for data in resp.content.iter_any():
                        if not opened.is_set():
                            opened.set()
                            first_seen += 1
                        n += data.count(b"\n")
                    chunks += n
                    if resp.status != 200 or n < scale.rss_tokens + 1:
                        errors += 1
                        error_text = error_text or f"HTTP {resp.status}, {n} lines"
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors += 1
                error_text = error_text or f"{exc.__class__.__name__}: {exc}"
            finally:
                if not opened.is_set():
                    opened.set()
                completed += 1

        tasks: list[asyncio.Task[None]] = []
        held = 0
        for level in scale.rss_levels:
            if level <= held:
                continue
            events = []
            for _ in range(level - held):
                event = asyncio.Event()
                events.append(event)
                tasks.append(asyncio.ensure_future(one(event)))
            await asyncio.gather(*(e.wait() for e in events))
            held = level
            await asyncio.sleep(scale.rss_interval * 2)
            points.append({"streams": level, "rss": server.rss(), "completed_before": completed})
            log(f"    {server.name}: {level} streams held, RSS {server.rss() / 2**20:.1f} MiB")
        await asyncio.gather(*tasks)
    peak = max(p["rss"] for p in points)
    return {
        "baseline_rss": baseline,
        "points": points,
        "growth_bytes": peak - baseline,
        "streams": held,
        "errors": errors,
        "error_text": error_text,
        "completed": completed,
        "all_held_at_peak": points[-1].get("completed_before", 0) == 0,
        "chunks": chunks,
    }


def rss_vs_streams(workdir: Path, scale: Scale, log: Callable[[str], None]) -> dict[str, Any]:
    top = max(scale.rss_levels)
    emulator = python_server(
        "emulator-slow",
        "emulator",
        free_port(),
        "--parallel",
        str(top + 64),
        "--max-queue",
        str(top * 2),
        "--token-interval",
        str(scale.rss_interval),
        log=workdir / "emulator-slow.log",
    )
    extra = ["--upstream", emulator.url, "--parallel", str(top + 64), "--max-queue", str(top * 2)]
    proxies = {
        name: python_server(name, name, free_port(), *extra, log=workdir / f"{name}-rss.log")
        for name in ("gateway", "plain-aiohttp")
    }
    _start(emulator, *proxies.values())
    out: dict[str, Any] = {"interval": scale.rss_interval, "tokens": scale.rss_tokens}
    try:
        for name, server in proxies.items():
            prefix, headers = ("/llm", _AUTH) if name == "gateway" else ("", {"Content-Type": "application/json"})
            out[name] = asyncio.run(_hold_streams(server.url + prefix + "/api/chat", headers, server, scale, log))
    finally:
        _stop(*proxies.values(), emulator)
    return out


# ------------------------------------------------------------------------------------- refill gap


async def _refill(gateway: Server, emulator: Server, seconds: float) -> dict[str, Any]:
    url = gateway.url + "/llm/api/chat"
    body = _body(10, stream=True)
    stop_at = time.monotonic() + seconds
    statuses: list[int] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client() -> None:
            while time.monotonic() < stop_at:
                async with session.post(url, data=body, headers=_AUTH) as resp:
                    await resp.read()
                    statuses.append(resp.status)

        await asyncio.gather(*(client() for _ in range(8)))
        timeline = await _get_json(session, emulator.url + "/_bench/timeline")
        status = await _get_json(
            session, gateway.url + "/llm/_gateway/status", {"Authorization": f"Bearer {ADMIN_KEY}"}
        )
    chats = sorted((arrived, ended) for path, arrived, ended in timeline if path == "/api/chat")
    upstream_gaps = [(nxt[0] - cur[1]) * 1e6 for cur, nxt in zip(chats, chats[1:], strict=False) if nxt[0] >= cur[1]]
    overlaps = sum(1 for cur, nxt in zip(chats, chats[1:], strict=False) if nxt[0] < cur[1])
    gateway_gaps = [g * 1e6 for q in status.get("queues", []) for g in q.get("refill_gaps_seconds", [])]
    return {
        "requests": len(statuses),
        "errors": sum(1 for s in statuses if s != 200),
        "upstream_gap_us": percentiles(upstream_gaps, (50, 90, 99)),
        "upstream_gaps": len(upstream_gaps),
        "overlaps": overlaps,  # requests upstream at the same time (must be 0 with parallel=1)
        "gateway_gap_us": percentiles(gateway_gaps, (50, 90, 99)),
        "gateway_gaps": len(gateway_gaps),
    }


def refill_gap(workdir: Path, scale: Scale, log: Callable[[str], None]) -> dict[str, Any]:
    emulator = python_server(
        "emulator-refill",
        "emulator",
        free_port(),
        "--parallel",
        "4",
        "--token-interval",
        "0.002",
        log=workdir / "emulator-refill.log",
    )
    gateway = python_server(
        "gateway-refill",
        "gateway",
        free_port(),
        "--upstream",
        emulator.url,
        "--parallel",
        "1",
        "--max-queue",
        "64",
        log=workdir / "gateway-refill.log",
    )
    _start(emulator, gateway)
    try:
        result = asyncio.run(_refill(gateway, emulator, scale.refill_seconds))
    finally:
        _stop(gateway, emulator)
    log(
        f"    refill gap: upstream p50 {result['upstream_gap_us'][0] if result['upstream_gap_us'] else float('nan'):.0f} us"
    )
    return result


# ------------------------------------------------------------------------------------- cold burst


async def _burst(url: str, headers: dict[str, str], stats_url: str, count: int) -> dict[str, Any]:
    body = _body(5, stream=False, model=COLD_MODEL)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def one() -> int:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        started = time.monotonic()
        statuses = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        elapsed = time.monotonic() - started
        stats = await _get_json(session, stats_url)
    return {
        "requests": count,
        "ok": sum(1 for s in statuses if s == 200),
        "statuses": sorted({str(s) for s in statuses}),
        "seconds": round(elapsed, 3),
        "upstream_loads": stats["loads"],
        "upstream_reloads": stats["reloads"],
    }


def cold_burst(workdir: Path, scale: Scale, log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {"load_seconds": 0.5}
    emulators = {
        name: python_server(
            f"emulator-cold-{name}",
            "emulator",
            free_port(),
            "--parallel",
            "8",
            "--load-seconds",
            "0.5",
            log=workdir / f"emulator-cold-{name}.log",
        )
        for name in ("gateway", "direct")
    }
    gateway = python_server(
        "gateway-cold",
        "gateway",
        free_port(),
        "--upstream",
        emulators["gateway"].url,
        "--parallel",
        "8",
        "--max-queue",
        str(scale.burst * 2),
        log=workdir / "gateway-cold.log",
    )
    _start(*emulators.values(), gateway)
    try:
        for name, emulator in emulators.items():
            if name == "gateway":
                url, headers = gateway.url + "/llm/api/chat", _AUTH
            else:
                url, headers = emulator.url + "/api/chat", {"Content-Type": "application/json"}
            out[name] = asyncio.run(_burst(url, headers, emulator.url + "/_bench/stats", scale.burst))
            log(f"    cold burst via {name}: {out[name]['upstream_loads']} load(s), {out[name]['ok']}/{scale.burst} ok")
    finally:
        _stop(gateway, *emulators.values())
    return out


# ------------------------------------------------------------------------------- Retry-After accuracy


async def _overload(url: str, seconds: float, rate: float, *, honour: bool) -> dict[str, Any]:
    """Open-loop arrivals at ``rate`` for ``seconds``; each client is its own host (X-Forwarded-For).

    A refused client either polls every 100 ms (``honour`` False) or waits as long as each
    Retry-After says before asking again (``honour`` True). Either way, what is measured is the
    time from its first refusal until it was admitted, against the first Retry-After it got.
    """
    body = _body(25, stream=False)
    advertised: list[float] = []
    actual: list[float] = []
    retries: list[int] = []
    outcomes: list[int] = []
    gave_up = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def attempt(host: str) -> tuple[int, float | None]:
            headers = {**_AUTH, "X-Forwarded-For": host}
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                after = resp.headers.get("Retry-After")
                return resp.status, float(after) if after else None

        async def client(number: int) -> None:
            nonlocal gave_up
            host = f"10.1.{number // 250}.{number % 250 + 1}"
            status, after = await attempt(host)
            if status != 503 or after is None:
                outcomes.append(status)
                return
            first = after
            rejected = time.monotonic()
            deadline = rejected + 60
            asked = 0
            while time.monotonic() < deadline:
                await asyncio.sleep(after if honour and after else 0.1)
                sent = time.monotonic()
                asked += 1
                status, again = await attempt(host)
                if status != 503:
                    advertised.append(first)
                    actual.append(sent - rejected)
                    retries.append(asked)
                    outcomes.append(status)
                    return
                after = again
            gave_up += 1

        tasks = []
        started = time.monotonic()
        for i in range(int(seconds * rate)):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            tasks.append(asyncio.ensure_future(client(i)))
        await asyncio.gather(*tasks)
    ratios = [a / b for a, b in zip(actual, advertised, strict=True) if b > 0]
    return {
        "honour": honour,
        "arrivals": len(outcomes) + gave_up,
        "rejected_then_retried": len(actual),
        "gave_up": gave_up,
        "non_200": sum(1 for s in outcomes if s != 200),
        "advertised_s": percentiles(advertised, (10, 50, 90)),
        "actual_s": percentiles(actual, (10, 50, 90)),
        "ratio": percentiles(ratios, (10, 50, 90)),
        "retries": percentiles([float(r) for r in retries], (50, 90)),
        # A retry sent exactly when advised arrives a moment after the advertised time: 0.25 s of slack.
        "within_advertised": round(
            sum(1 for a, b in zip(actual, advertised, strict=True) if a <= b + 0.25) / len(actual), 3
        )
        if actual
        else None,
        "first_retry_admitted": round(sum(1 for r in retries if r == 1) / len(retries), 3) if retries else None,
        "mean_abs_error_s": round(statistics.fmean(abs(a - b) for a, b in zip(actual, advertised, strict=True)), 3)
        if actual
        else None,
    }


def retry_after(workdir: Path, scale: Scale, log: Callable[[str], None]) -> dict[str, Any]:
    """Clients that poll every 100 ms; ``retry_after_honoured``: clients that wait as told."""
    return _retry_after(workdir, scale, log, honour=False)


def retry_after_honoured(workdir: Path, scale: Scale, log: Callable[[str], None]) -> dict[str, Any]:
    return _retry_after(workdir, scale, log, honour=True)


def _retry_after(workdir: Path, scale: Scale, log: Callable[[str], None], *, honour: bool) -> dict[str, Any]:
    name = "retry-honoured" if honour else "retry"
    emulator = python_server(
        f"emulator-{name}",
        "emulator",
        free_port(),
        "--parallel",
        "4",
        "--token-interval",
        str(scale.retry_interval),
        log=workdir / f"emulator-{name}.log",
    )
    gateway = python_server(
        f"gateway-{name}",
        "gateway",
        free_port(),
        "--upstream",
        emulator.url,
        "--parallel",
        "2",
        "--max-queue",
        "4",
        log=workdir / f"gateway-{name}.log",
    )
    _start(emulator, gateway)
    try:
        # Capacity: 2 slots over 25 tokens' time per answer (0.5 s at 20 ms a token) = 4 per second.
        service = 25 * scale.retry_interval
        asyncio.run(_warm(gateway.url + "/llm/api/chat"))
        result = asyncio.run(
            _overload(gateway.url + "/llm/api/chat", scale.overload_seconds, rate=2 * 2 / service, honour=honour)
        )
    finally:
        _stop(gateway, emulator)
    result.update(
        {
            "parallel": 2,
            "max_queue": 4,
            "service_s": service,
            "offered_per_s": 4 / service,
            "capacity_per_s": 2 / service,
        }
    )
    log(
        f"    Retry-After ({'honoured' if honour else 'polling'}): advertised p50 {result['advertised_s'][1] if result['advertised_s'] else 'n/a'} s, "
        f"actual p50 {result['actual_s'][1] if result['actual_s'] else 'n/a'} s"
    )
    return result


async def _warm(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(4):  # four answers give the service-time estimate Retry-After is built on
            async with session.post(url, data=_body(25, stream=False), headers=_AUTH) as resp:
                await resp.read()


def run_all(workdir: Path, scale: Scale, log: Callable[[str], None], *, together: bool = False) -> dict[str, Any]:
    """Every scenario, one after the other; ``together`` runs them at once (the smoke test: no figures)."""
    jobs: dict[str, Callable[[Path, Scale, Callable[[str], None]], dict[str, Any]]] = {
        "rss_streams": rss_vs_streams,
        "refill_gap": refill_gap,
        "cold_burst": cold_burst,
        "retry_after": retry_after,
        "retry_after_honoured": retry_after_honoured,
    }
    if not together:
        return {name: job(workdir, scale, log) for name, job in jobs.items()}
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job, workdir, scale, log) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}
