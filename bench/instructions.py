"""Instructions per request under callgrind: ``python -m bench.instructions [--baseline REF] [...]``.

Wall-clock and CPU-time figures move with whatever else a shared machine is doing; the number of
instructions a server executes for a request does not (valgrind counts them, it does not time
them: the same binary and inputs give the same count to a fraction of a percent). That makes it
the figure to compare two versions of the hot path by, in one run or across days.

Each target (the plain aiohttp proxy, the gateway in its Starlette host, and with ``--baseline``
the gateway as it was at a git ref) runs under ``valgrind --tool=callgrind`` in front of the
emulator, which runs normally. After warm-up requests the counters are zeroed
(``callgrind_control -z``), ``--requests`` small ``/api/chat`` requests are sent one after another
over one keep-alive connection, and the counters are dumped. Everything the process executed in
between is counted, including background work the gateway does on a timer (``/api/ps`` polls and
health probes every 5 s): valgrind runs the server some 50× slower, so that work weighs more here
than at full speed, but little (with both made hourly the gateway's count fell by 0.4%).

Needs valgrind (Debian's package); prints one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.gateway_host import BENCH_KEY
from bench.procs import ROOT, Server, free_port, python_server
from bench.run import MESSAGES, MODEL, baseline_copy

_BODY = json.dumps(
    {"model": MODEL, "messages": MESSAGES, "stream": False, "options": {"num_predict": 1}}, separators=(",", ":")
).encode()


def _post(port: int, path: str, body: bytes, count: int, lines: int | None = None) -> None:
    """``count`` POSTs in a row on one keep-alive connection; every answer must be a 200 and, for a
    stream, ``lines`` whole lines ending with the final chunk."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
    try:
        for _ in range(count):
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            answer = response.read().splitlines()
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}")
            if lines is not None and (len(answer) != lines or b'"done":true' not in answer[-1]):
                raise RuntimeError(f"{path} answered {len(answer)} lines, not {lines}")
    finally:
        connection.close()


def _send(port: int, path: str, count: int) -> None:
    _post(port, path, _BODY, count)


def _stream(port: int, path: str, tokens: int, count: int) -> None:
    """``count`` streamed answers of ``tokens`` tokens, one line per token and the final chunk."""
    body = json.dumps(
        {"model": MODEL, "messages": MESSAGES, "stream": True, "options": {"num_predict": tokens}},
        separators=(",", ":"),
    ).encode()
    _post(port, path, body, count, lines=tokens + 1)


def _counted(pid: str) -> None:
    """Dump the counters since the last zeroing (callgrind numbers its dumps 1, 2, ...) and zero them."""
    subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)


def _totals(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def _count_phases(
    name: str,
    kind: str,
    upstream: str,
    workdir: Path,
    phases: list[Callable[[int, str], None]],
    *,
    warmup: Callable[[int, str], None],
    package_path: str | None,
) -> list[int]:
    """Run one target under callgrind; the instructions it executed during each phase, in order."""
    port = free_port()
    out = workdir / f"callgrind.{name}"
    for old in workdir.glob(f"callgrind.{name}.*"):
        old.unlink()
    args = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "bench.serve",
        kind,
        "--port",
        str(port),
        "--upstream",
        upstream,
        "--gc",
        "tuned",
    ]
    if kind == "gateway":
        args += ["--parallel", "64", "--max-queue", "512"]
    if package_path:
        args += ["--package-path", package_path]
    server = Server(name, args, port, env={"PYTHONHASHSEED": "0"}, log=workdir / f"{name}.log")
    server.start(timeout=300)
    assert server.proc is not None
    pid = str(server.proc.pid)  # valgrind runs the tool in the process it was started as
    path = "/llm/api/chat" if kind == "gateway" else "/api/chat"
    try:
        warmup(port, path)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        for phase in phases:
            phase(port, path)
            _counted(pid)
    finally:
        server.stop()
    # callgrind numbers the dumps it was asked for 1, 2, ...; the one written at exit has no number.
    dumps = {d.name.rsplit(".", 1)[1]: d for d in workdir.glob(f"callgrind.{name}.*")}
    missing = [n for n in range(1, len(phases) + 1) if str(n) not in dumps]
    if missing:
        raise RuntimeError(f"callgrind wrote no dump {missing} for {name}")
    return [_totals(dumps[str(n)]) for n in range(1, len(phases) + 1)]


def measure(
    name: str, kind: str, upstream: str, workdir: Path, *, requests: int, warmup: int, package_path: str | None = None
) -> int:
    """Instructions per small request of one target."""
    (total,) = _count_phases(
        name,
        kind,
        upstream,
        workdir,
        [lambda port, path: _send(port, path, requests)],
        warmup=lambda port, path: _send(port, path, warmup),
        package_path=package_path,
    )
    return total // requests


def measure_chunks(
    name: str, kind: str, paced_upstream: str, workdir: Path, *, streams: int, package_path: str | None = None
) -> int:
    """Instructions per relayed chunk: the slope between ``streams`` answers of 10 and of 210 tokens.

    ``paced_upstream`` is an emulator that paces its tokens, so every line reaches the proxy on its
    own, as Ollama's tokens do; the figure is what one more token costs, request costs excluded.
    """
    short, long = _count_phases(
        name + "-chunks",
        kind,
        paced_upstream,
        workdir,
        [lambda port, path: _stream(port, path, 10, streams), lambda port, path: _stream(port, path, 210, streams)],
        warmup=lambda port, path: _stream(port, path, 10, 2),
        package_path=package_path,
    )
    return (long - short) // (200 * streams)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--baseline", default=None, help="also count the gateway at this git ref (or directory)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--streams", type=int, default=5, help="streamed answers per length for the per-chunk figure (0: none)"
    )
    parser.add_argument("--token-interval", type=float, default=0.005, help="seconds between the paced tokens")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print(json.dumps({"error": "valgrind is not installed (Debian: apt-get install valgrind)"}))
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        workdir = Path(tmp)
        emulator = python_server("emulator", "emulator", free_port(), "--parallel", "256", log=workdir / "emu.log")
        paced = python_server(
            "paced-emulator",
            "emulator",
            free_port(),
            "--parallel",
            "256",
            "--token-interval",
            str(args.token_interval),
            log=workdir / "paced.log",
        )
        emulator.start()
        paced.start()
        result: dict[str, Any] = {"requests": args.requests, "python": sys.version.split()[0]}
        try:
            targets: list[tuple[str, str, str | None]] = [("plain-aiohttp", "plain-aiohttp", None)]
            targets.append(("gateway", "gateway", None))
            if args.baseline:
                targets.append(("gateway-baseline", "gateway", str(baseline_copy(args.baseline, workdir))))
                result["baseline"] = args.baseline
            counts = {}
            chunks: dict[str, int] = {}
            for name, kind, package in targets:
                counts[name] = measure(
                    name,
                    kind,
                    emulator.url,
                    workdir,
                    requests=args.requests,
                    warmup=args.warmup,
                    package_path=package,
                )
                print(f"{name}: {counts[name]:,} instructions per request", file=sys.stderr)
                if args.streams:
                    chunks[name] = measure_chunks(
                        name, kind, paced.url, workdir, streams=args.streams, package_path=package
                    )
                    print(f"{name}: {chunks[name]:,} instructions per relayed chunk", file=sys.stderr)
        finally:
            emulator.stop()
            paced.stop()
        result["instructions_per_request"] = counts
        plain = counts["plain-aiohttp"]
        result["ratio_to_plain"] = {k: round(v / plain, 3) for k, v in counts.items()}
        if chunks:
            result["instructions_per_chunk"] = chunks
            result["chunk_ratio_to_plain"] = {k: round(v / chunks["plain-aiohttp"], 3) for k, v in chunks.items()}
        if "gateway-baseline" in counts:
            result["gateway_vs_baseline"] = round(counts["gateway"] / counts["gateway-baseline"], 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
