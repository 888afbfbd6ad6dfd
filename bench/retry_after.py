"""Retry-After at ten times capacity: ``python -m bench.retry_after [--seconds S] [--arrivals N] [--baseline DIR]``.

The gateway (``ollama-asgi serve``, 2 slots, a queue of 8) in front of the emulator answering in
about 0.2 s: about 10 answers a second. By default 100 clients ask in closed loops, each sending
its next request as soon as it has an answer: ten times what the slots and the queue hold. With
``--arrivals N``, N new clients arrive each second instead (100: ten times capacity), each asking
until it is answered once; retries go on ``--tail`` seconds after the arrivals end. Half the
clients obey ``Retry-After`` when refused (sleep that long, then ask again); the other half ask
again every second whatever they were told. A run is done once with one loopback address per
client (one host each) and once from one address.

Reported per run: of the refusals met by obeying clients (whose retry came within the run), how
many were admitted at their first retry; the advice they were given (median and 90th percentile,
seconds) beside the time from that refusal to the request that was answered; and the same time for
the clients that asked every second. ``--baseline DIR`` runs the same with ``ollama_asgi`` imported
from DIR (an earlier version) after the current one. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import free_port, python_server, start_gateway_process

_KEY = "bench-retry-0123456789"
_BODY = json.dumps(
    {"model": "llama3.2", "prompt": "w", "stream": False, "options": {"num_predict": 10}}, separators=(",", ":")
).encode()


@dataclass
class Episode:
    """From a client's first refusal to the request of its that was answered."""

    obeys: bool
    advice: float
    retries: int = 0
    waited: float | None = None  # None: still refused when the run ended


@dataclass
class Tally:
    episodes: list[Episode] = field(default_factory=list)
    answered: int = 0
    errors: int = 0


def _gateway(upstream: str, log: Path, package_path: str | None) -> tuple[subprocess.Popen[bytes], str]:
    for _ in range(3):  # a port found free may be taken before the gateway binds it
        try:
            return _start(upstream, log, package_path)
        except RuntimeError:
            time.sleep(1.0)
    return _start(upstream, log, package_path)


def _start(upstream: str, log: Path, package_path: str | None) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        "OLLAMA_ASGI_UPSTREAMS": upstream,
        "OLLAMA_ASGI_API_KEYS": f"bench={_KEY}",
        "OLLAMA_ASGI_PARALLEL": "2",
        "OLLAMA_ASGI_MAX_QUEUE": "8",
        "OLLAMA_ASGI_QUEUE_TIMEOUT": "120",
    }
    return start_gateway_process(
        env, stderr=log.open("ab"), package_path=package_path, serve_args=("--host", "0.0.0.0")
    )


async def _client(url: str, host: str, obeys: bool, stop_at: float, tally: Tally, once: bool = False) -> None:
    connector = aiohttp.TCPConnector(local_addr=(host, 0), limit=1)
    headers = {"Authorization": f"Bearer {_KEY}", "Content-Type": "application/json"}
    clock = time.monotonic
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=180)) as session:
        episode: Episode | None = None
        refused_at = sent = 0.0
        while clock() < stop_at:
            try:
                async with session.post(url + "/api/generate", data=_BODY, headers=headers) as answer:
                    await answer.read()
                    status, advice = answer.status, answer.headers.get("retry-after")
            except aiohttp.ClientError:  # a connection the server closed: ask again on a new one
                tally.errors += 1
                continue
            if status == 200:
                tally.answered += 1
                if episode is not None:
                    episode.waited = sent - refused_at  # from the refusal to the retry that was answered
                    episode = None
                if once:
                    return
                continue
            if status != 503 or advice is None:
                await asyncio.sleep(1.0)
                continue
            if episode is None:
                episode = Episode(obeys, float(advice))
                tally.episodes.append(episode)
                refused_at = clock()
            else:
                episode.retries += 1
            pause = float(advice) if obeys else 1.0
            if clock() + pause >= stop_at:
                return
            await asyncio.sleep(pause)
            sent = clock()


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _host(i: int, one_address: bool) -> str:
    return "127.0.0.1" if one_address else f"127.0.{1 + i // 250 % 250}.{1 + i % 250}"


async def _run(url: str, args: argparse.Namespace, one_address: bool) -> dict[str, Any]:
    tally = Tally()
    if args.arrivals:  # open: a new client every 1/arrivals s, each gone once answered (or at the end)
        stop_at = time.monotonic() + args.seconds + args.tail
        tasks = []
        for i in range(int(args.arrivals * args.seconds)):
            tasks.append(asyncio.ensure_future(_client(url, _host(i, one_address), i % 2 == 0, stop_at, tally, True)))
            await asyncio.sleep(1 / args.arrivals)
        await asyncio.gather(*tasks)
    else:
        stop_at = time.monotonic() + args.seconds
        await asyncio.gather(
            *(_client(url, _host(i, one_address), i % 2 == 0, stop_at, tally) for i in range(args.clients))
        )
    obeying = [e for e in tally.episodes if e.obeys and (e.waited is not None or e.retries)]
    polling = [e for e in tally.episodes if not e.obeys and e.waited is not None]
    first = [e for e in obeying if e.waited is not None and e.retries == 0]
    return {
        "answered": tally.answered,
        "connection_errors": tally.errors,
        "refusals_met_by_obeying_clients": len(obeying),
        "admitted_at_first_retry": round(len(first) / len(obeying), 3) if obeying else None,
        "advice_seconds_p50_p90": [_quantile([e.advice for e in obeying], q) for q in (0.5, 0.9)],
        "obeying_wait_seconds_p50_p90": [
            _quantile([e.waited for e in obeying if e.waited is not None], q) for q in (0.5, 0.9)
        ],
        "polling_wait_seconds_p50_p90": [
            _quantile([e.waited for e in polling if e.waited is not None], q) for q in (0.5, 0.9)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=100, help="closed loops (without --arrivals)")
    parser.add_argument("--arrivals", type=float, default=0.0, help="new clients per second, each answered once")
    parser.add_argument("--tail", type=float, default=25.0, help="seconds after the arrivals end that retries go on")
    parser.add_argument("--baseline", default=None, help="a directory holding an earlier ollama_asgi")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-retry-after-"))
    emulator = python_server(
        "emulator",
        "emulator",
        free_port(),
        "--parallel",
        "64",
        "--token-interval",
        "0.02",
        log=workdir / "emulator.log",
    )
    emulator.launch()
    report: dict[str, Any] = {
        "seconds": args.seconds,
        "clients": None if args.arrivals else args.clients,
        "arrivals_per_second": args.arrivals or None,
        "runs": [],
    }
    versions = [("current", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    try:
        emulator.wait_ready()
        for one_address in (False, True):
            for version, package_path in versions:
                process, url = _gateway(emulator.url, workdir / f"{version}.log", package_path)
                try:
                    result = asyncio.run(_run(url, args, one_address))
                finally:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(15)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(5)
                where = "one address" if one_address else "one host per client"
                report["runs"].append({"version": version, "clients_from": where, **result})
                print(f"{version}, {where}: {result}", file=sys.stderr)
    finally:
        emulator.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
