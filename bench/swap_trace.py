"""Swap-aware scheduling and queue estimates, measured against a real Ollama.

Usage: ``OLLAMA_BIN=/path/to/ollama python -m bench.swap_trace [--skip-real] [--skip-emulator]``;
prints a Markdown table and writes ``bench/results/swap_trace.json``.

Real Ollama, started with ``OLLAMA_MAX_LOADED_MODELS=1`` (a fresh server per run, so its log counts
only that run's loads), the suite's fixture models as one-thread copies:

- ``alternating``: 40 streamed chats queued at once, alternating between two models;
- ``multi``: 80 chats over four models (40/30/20/10 %), arriving about every 50 ms.

Each is sent directly to Ollama, through the gateway with grouping off (``swap_grouping=false``:
FIFO) and with it on; the gateway runs with ``parallel=1`` and ``max_loaded_models=1``. Loads come
from the server's log. Every queued request through the gateway asks ``GET /_gateway/queue/{id}``
once, and its ``expected_wait`` is set beside the wait that followed (until its first line).

``steady``: three clients ask for one model back to back for 12 s while a request for the other
arrives every 2 s. Grouping runs with ``swap_max_delay=2``: the bound at work. Without it, the
other model's load waits for the busy model to go idle, which its clients never let happen.

``arrival`` is the gateway with its model lifecycle off (``lifecycle=false``): requests reach
Ollama in arrival order, one at a time, as a plain FIFO proxy would send them.

``--hot-path REF`` counts instructions per small request under callgrind (``bench.instructions``),
the gateway as it was at ``REF`` (a git ref, or a directory holding ``ollama_asgi``: the tree with
grouping taken out) beside ``--after`` (default the working tree): with default settings, and with
``max_loaded_models=1`` on a one-model load that never passes the limit, grouping off and on.

The emulator part measures the same estimate where service times are fixed: 40 streams of 16
tokens at 20 ms a token, queued at once on one model behind ``parallel=2``, each asking twice
(before any request has finished, and after some have).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.procs import free_port, start_gateway_process, stop_process
from ollama_asgi.testing import EmulatorServer
from ollama_asgi.testing.real import RealOllama, find_ollama_binary

API_KEY = "bench-swap-key-1"
FIXTURES = ("tiny", "tools", "loop", "tools2")


@dataclass
class Sent:
    model: str
    request_id: str
    submitted: float = 0.0
    first: float = 0.0  # first line of the answer
    done: float = 0.0
    status: int = 0
    queue_wait: float | None = None  # X-Queue-Wait
    queue_position: int | None = None  # X-Queue-Position
    polls: list[dict[str, float]] = field(default_factory=list)  # expected vs actual, per status call


def alternating(n: int = 40) -> list[tuple[float, str]]:
    return [(0.0, ("tiny-1t", "tools-1t")[i % 2]) for i in range(n)]


def multi(n: int = 80, gap: float = 0.05, seed: int = 7) -> list[tuple[float, str]]:
    rng = random.Random(seed)
    models = [f"{name}-1t" for name in FIXTURES]
    return [(i * gap, rng.choices(models, weights=(4, 3, 2, 1))[0]) for i in range(n)]


# -- processes ----------------------------------------------------------------------------------------


def start_gateway(upstream: str, **settings: str) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        "OLLAMA_ASGI_UPSTREAMS": upstream,
        "OLLAMA_ASGI_API_KEYS": f"bench={API_KEY}",
        "OLLAMA_ASGI_MAX_QUEUE": "1000",
        "OLLAMA_ASGI_QUEUE_TIMEOUT": "600",
        "OLLAMA_ASGI_QUEUE_TIMEOUT_MAX": "600",
        "OLLAMA_ASGI_LOAD_WAIT_TIMEOUT": "600",
    }
    env.update({f"OLLAMA_ASGI_{k.upper()}": v for k, v in settings.items()})
    return start_gateway_process(env)


def start_ollama(binary: str, models_dir: Path, fixtures_dir: Path) -> RealOllama:
    server = RealOllama(binary, env={"OLLAMA_MAX_LOADED_MODELS": "1"}, models_dir=models_dir, fixtures_dir=fixtures_dir)
    server.start()
    try:
        server.create(FIXTURES)
        for name in FIXTURES:
            body = {"model": f"{name}-1t", "from": name, "parameters": {"num_thread": 1}, "stream": False}
            status, answer = server.request("POST", "/api/create", body)
            if status != 200:
                raise RuntimeError(f"creating {name}-1t failed: {answer}")
    except BaseException:
        server.stop()
        raise
    return server


# -- clients ------------------------------------------------------------------------------------------


async def send_one(client: httpx.AsyncClient, sent: Sent, tokens: int) -> None:
    body = {
        "model": sent.model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "options": {"num_predict": tokens},
    }
    sent.submitted = time.perf_counter()
    async with client.stream("POST", "/api/chat", json=body, headers={"x-request-id": sent.request_id}) as answer:
        sent.status = answer.status_code
        if "x-queue-wait" in answer.headers:
            sent.queue_wait = float(answer.headers["x-queue-wait"])
            sent.queue_position = int(answer.headers["x-queue-position"])
        async for line in answer.aiter_lines():
            if line and not sent.first:
                sent.first = time.perf_counter()
    sent.done = time.perf_counter()
    sent.first = sent.first or sent.done


async def poll(client: httpx.AsyncClient, sent: Sent) -> None:
    """Ask where the request stands; kept only while it still waits."""
    asked = time.perf_counter()
    answer = await client.get(f"/_gateway/queue/{sent.request_id}")
    if answer.status_code == 200:
        told = answer.json()
        sent.polls.append({"asked": asked, "expected": told["expected_wait"], "position": told["position"]})


async def replay(
    base: str,
    trace: list[tuple[float, str]],
    *,
    key: str | None,
    tokens: int,
    polls: tuple[float, ...] = (),
) -> list[Sent]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=len(trace) + 16, max_keepalive_connections=len(trace) + 16)
    sents = [Sent(model, f"swap-{i:04d}") for i, (_, model) in enumerate(trace)]
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=900, limits=limits) as client:
        started = time.perf_counter()

        async def arrive(at: float, sent: Sent) -> None:
            await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
            await send_one(client, sent, tokens)

        async def ask(after: float, sent: Sent, at: float) -> None:
            await asyncio.sleep(max(0.0, started + at + after - time.perf_counter()))
            if not sent.first:
                await poll(client, sent)

        tasks = [arrive(at, sent) for (at, _), sent in zip(trace, sents, strict=True)]
        tasks += [ask(after, sent, at) for after in polls for (at, _), sent in zip(trace, sents, strict=True)]
        await asyncio.gather(*tasks)
    return sents


async def steady(base: str, *, key: str | None, seconds: float = 12.0, every: float = 2.0) -> list[Sent]:
    """Three closed-loop clients on ``tiny-1t`` for ``seconds``; a ``tools-1t`` request every ``every`` s."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    sents: list[Sent] = []
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=900) as client:
        started = time.perf_counter()

        async def busy(n: int) -> None:
            i = 0
            while time.perf_counter() - started < seconds:
                sent = Sent("tiny-1t", f"steady-a{n}-{i}")
                sents.append(sent)
                await send_one(client, sent, 8)
                i += 1

        async def other(i: int) -> None:
            await asyncio.sleep(every / 2 + i * every)
            sent = Sent("tools-1t", f"steady-b{i}")
            sents.append(sent)
            await send_one(client, sent, 8)

        await asyncio.gather(*(busy(n) for n in range(3)), *(other(i) for i in range(int(seconds / every))))
    sents.sort(key=lambda s: s.submitted)
    return sents


# -- figures ------------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def overtakes(sents: list[Sent]) -> int:
    """The most requests that arrived later yet started answering first, over all requests."""
    worst = 0
    for i, sent in enumerate(sents):
        worst = max(worst, sum(1 for later in sents[i + 1 :] if later.first < sent.first))
    return worst


def estimates(sents: list[Sent], which: int) -> dict[str, float] | None:
    """``expected_wait`` told at a request's ``which``-th status call beside the wait that followed."""
    pairs = [(s.polls[which]["expected"], s.first - s.polls[which]["asked"]) for s in sents if len(s.polls) > which]
    if not pairs:
        return None
    errors = [abs(e - a) for e, a in pairs]
    ratios = [e / a for e, a in pairs if a > 0.05]
    return {
        "requests": len(pairs),
        "actual_median_s": round(statistics.median(a for _, a in pairs), 3),
        "expected_median_s": round(statistics.median(e for e, _ in pairs), 3),
        "abs_error_median_s": round(statistics.median(errors), 3),
        "abs_error_p90_s": round(_pct(errors, 0.9), 3),
        "ratio_median": round(statistics.median(ratios), 3) if ratios else 0.0,
        "within_25pct": round(sum(1 for r in ratios if 0.75 <= r <= 1.25) / len(ratios), 3) if ratios else 0.0,
    }


def summary(name: str, sents: list[Sent], wall: float, loads: int | None) -> dict[str, Any]:
    latencies = [s.done - s.submitted for s in sents]
    return {
        "run": name,
        "requests": len(sents),
        "served": sum(1 for s in sents if s.status == 200),
        "statuses": sorted({s.status for s in sents}),
        "loads": loads,
        "wall_s": round(wall, 3),
        "p50_s": round(_pct(latencies, 0.5), 3),
        "p99_s": round(_pct(latencies, 0.99), 3),
        "max_s": round(max(latencies), 3),
        "max_overtaken_by": overtakes(sents),
        "estimate_first_call": estimates(sents, 0),
        "estimate_second_call": estimates(sents, 1),
    }


# -- runs -----------------------------------------------------------------------------------------------


_GATEWAYS: dict[str, dict[str, str]] = {
    "arrival": {"parallel": "1", "lifecycle": "false"},
    "fifo": {"parallel": "1", "max_loaded_models": "1", "swap_grouping": "false"},
    "grouped": {"parallel": "1", "max_loaded_models": "1", "swap_grouping": "true"},
}


def real_runs(binary: str, traces: dict[str, list[tuple[float, str]] | None], repeat: int = 1) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="swap-trace-") as tmp:
        models_dir, fixtures_dir = Path(tmp, "models"), Path(tmp, "fixtures")
        runs = [(t, how) for _ in range(repeat) for t in traces for how in ("direct", "arrival", "fifo", "grouped")]
        for trace_name, how in runs:
            trace = traces[trace_name]
            server = start_ollama(binary, models_dir, fixtures_dir)
            gateway = None
            try:
                base, key = server.url, None
                if how != "direct":
                    settings = dict(_GATEWAYS[how])
                    if trace is None and how == "grouped":
                        settings["swap_max_delay"] = "2"
                    gateway, base = start_gateway(server.url, **settings)
                    key = API_KEY
                before = server.loads()
                started = time.perf_counter()
                if trace is None:
                    sents = asyncio.run(steady(base, key=key))
                else:
                    sents = asyncio.run(replay(base, trace, key=key, tokens=8, polls=(0.3,) if key else ()))
                wall = time.perf_counter() - started
                rows.append(summary(f"{trace_name}/{how}", sents, wall, server.loads() - before))
                others = [s.done - s.submitted for s in sents if s.model == "tools-1t"]
                rows[-1]["other_model_max_s"] = round(max(others), 3)
                rows[-1]["sent"] = [asdict(s) for s in sents]
            finally:
                if gateway is not None:
                    stop_process(gateway)
                server.stop()
            print(_row(rows[-1]), flush=True)
    return rows


def emulator_run() -> dict[str, Any]:
    with EmulatorServer(parallel=2, token_interval=0.02) as emulator:
        gateway, base = start_gateway(emulator.url, parallel="2", prewarm="false")
        try:
            trace = [(0.0, "llama3.2")] * 40
            asyncio.run(replay(base, trace[:1], key=API_KEY, tokens=2))  # loaded before the burst
            started = time.perf_counter()
            sents = asyncio.run(replay(base, trace, key=API_KEY, tokens=16, polls=(0.1, 1.0)))
            wall = time.perf_counter() - started
        finally:
            stop_process(gateway)
    row = summary("emulator/one-model", sents, wall, None)
    row["sent"] = [asdict(s) for s in sents]
    print(_row(row), flush=True)
    return row


def hot_path(before: str, after: str | None, requests: int) -> dict[str, Any]:
    from bench.instructions import measure
    from bench.procs import python_server
    from bench.run import baseline_copy

    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="swap-hot-path-") as tmp:
        workdir = Path(tmp)
        emulator = python_server("emulator", "emulator", free_port(), "--parallel", "256", log=workdir / "emu.log")
        emulator.start()
        try:
            old = str(baseline_copy(before, workdir))
            new = str(baseline_copy(after, workdir)) if after else None
            targets: tuple[tuple[str, str | None, dict[str, object] | None], ...] = (
                ("before", old, None),
                ("after", new, None),
                (
                    "after, max_loaded_models=1, swap_grouping=false",
                    new,
                    {"max_loaded_models": 1, "swap_grouping": False},
                ),
                ("after, max_loaded_models=1", new, {"max_loaded_models": 1}),
            )
            for index, (name, package, extra) in enumerate(targets):
                os.environ.pop("BENCH_GATEWAY_SETTINGS", None)
                if extra:
                    os.environ["BENCH_GATEWAY_SETTINGS"] = json.dumps(extra)
                counts[name] = measure(
                    f"target{index}",
                    "gateway",
                    emulator.url,
                    workdir,
                    requests=requests,
                    warmup=requests // 3,
                    package_path=package,
                )
                print(f"{name}: {counts[name]:,} instructions per request", flush=True)
        finally:
            os.environ.pop("BENCH_GATEWAY_SETTINGS", None)
            emulator.stop()
    base = counts["before"]
    return {
        "before": before,
        "after": after or "working tree",
        "instructions_per_request": counts,
        "ratio_to_before": {k: round(v / base, 4) for k, v in counts.items()},
    }


def _row(r: dict[str, Any]) -> str:
    est = r["estimate_first_call"] or {}
    return (
        f"| {r['run']} | {r['served']}/{r['requests']} | {r['loads'] if r['loads'] is not None else '—'} "
        f"| {r['p50_s']:.2f} | {r['p99_s']:.2f} | {r['wall_s']:.1f} | {r['max_overtaken_by']} "
        f"| {est.get('abs_error_median_s', '—')} | {est.get('ratio_median', '—')} "
        f"| {r.get('other_model_max_s', '—')} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-emulator", action="store_true")
    parser.add_argument("--hot-path", metavar="REF", help="only count instructions per request: REF beside --after")
    parser.add_argument("--after", default=None, help="git ref for --hot-path (default: the working tree)")
    parser.add_argument("--requests", type=int, default=300, help="requests counted per target for --hot-path")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the real runs (loads vary run to run)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "swap_trace.json"))
    args = parser.parse_args()
    if args.hot_path:
        result = hot_path(args.hot_path, args.after, args.requests)
        out = Path(args.out).with_name("swap_hot_path.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
        return
    print(
        "| run | served | loads | p50 s | p99 s | wall s | max overtaken by | estimate error (median s) "
        "| expected/actual (median) | tools-1t max s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows: list[dict[str, Any]] = []
    if not args.skip_emulator:
        rows.append(emulator_run())
    if not args.skip_real:
        binary = find_ollama_binary()
        if binary is None:
            raise SystemExit("no Ollama binary: set OLLAMA_BIN")
        traces = {"alternating": alternating(), "multi": multi(), "steady": None}
        rows += real_runs(binary, traces, args.repeat)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
