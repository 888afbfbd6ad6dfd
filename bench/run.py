"""``python -m bench``: every target measured in one run, interleaved, then ``BENCHMARKS.md`` rendered.

Targets are measured round-robin within each measurement step (the order rotates every repeat)
and the steps are repeated, so slow drift of a shared 2-core machine lands on all targets alike.
Figures are medians over repeats; the spread over repeats is kept to say how noisy they are.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import load, scenarios
from bench.external import LITELLM_KEY, LITELLM_VERSION, nginx_version, prepare_litellm, prepare_nginx
from bench.gateway_host import BENCH_KEY
from bench.procs import ROOT, Server, free_port, python_server, stop_all

MODEL = "qwen2.5:0.5b"
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    family: str  # "native" (/api/chat) or "openai" (/v1/chat/completions)
    concurrency: int
    tokens: int = 0  # 0: a small non-streamed answer of one token
    seconds: float = 2.0
    warmup: float = 0.2  # seconds at the start of an aiohttp step that are not counted

    @property
    def stream(self) -> bool:
        return self.tokens > 0


@dataclass(slots=True)
class Target:
    name: str
    base: str  # URL prefix the API paths are appended to
    families: tuple[str, ...]
    headers: dict[str, str]
    server: Server | None  # the process whose CPU and memory are read (None: not measured)
    model: str = MODEL
    version: str = ""
    note: str = ""

    def request(self, step: Step) -> load.Request:
        if step.family == "native":
            body: dict[str, Any] = {"model": self.model, "messages": MESSAGES, "stream": step.stream}
            body["options"] = {"num_predict": step.tokens or 1}
            path = "/api/chat"
        else:
            body = {"model": self.model, "messages": MESSAGES, "max_tokens": step.tokens or 1}
            if step.stream:
                body["stream"] = True
            path = "/v1/chat/completions"
        headers = {"Content-Type": "application/json", **self.headers}
        return load.Request(self.base + path, orjson.dumps(body), headers, step.stream, step.family == "openai")


@dataclass(slots=True)
class Plan:
    steps: list[Step]
    repeats: int
    warmup_requests: int
    scale: scenarios.Scale | None
    loadgen: str


def full_plan(seconds: float) -> list[Step]:
    """Latency at c=1 and streams at c=16 get twice a throughput step's time; streams at c=1 run on aiohttp."""
    s = max(1, round(seconds))
    c1 = 2 * s
    return [
        Step("small-c1", "native", 1, 0, c1),
        Step("small-c16", "native", 16, 0, s),
        Step("small-c64", "native", 64, 0, s),
        Step("stream200-c1", "native", 1, 200, 1.2 * s),
        Step("stream200-c16", "native", 16, 200, 2 * s),
        Step("stream500-c1", "native", 1, 500, 1.2 * s),
        Step("stream500-c16", "native", 16, 500, 2 * s),
        Step("small-c1", "openai", 1, 0, c1),
        Step("small-c16", "openai", 16, 0, s),
        Step("stream200-c1", "openai", 1, 200, 1.2 * s),
        Step("stream200-c16", "openai", 16, 200, 2 * s),
    ]


def tiny_plan() -> list[Step]:
    return [
        Step("small-c1", "native", 1, 0, 0.1, 0.03),
        Step("small-c4", "native", 4, 0, 0.1, 0.03),
        Step("stream20-c1", "native", 1, 20, 0.1, 0.03),
        Step("small-c1", "openai", 1, 0, 0.1, 0.03),
        Step("stream20-c1", "openai", 1, 20, 0.1, 0.03),
    ]


# ------------------------------------------------------------------------------------------ machine


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "ollama_asgi"], cwd=ROOT, capture_output=True, text=True, check=False
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "", False
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in (
                "uvicorn",
                "uvloop",
                "httptools",
                "aiohttp",
                "httpx",
                "starlette",
                "orjson",
                "prometheus-client",
                "ollama-asgi",
            )
        },
        "wrk": load.wrk_version(),
        "nginx": nginx_version(),
        "git_commit": commit,
        "package_modified": dirty,
        "loadavg_start": list(os.getloadavg()),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------------ targets


def baseline_copy(ref: str, workdir: Path) -> Path:
    """``ollama_asgi`` as it is at git ``ref`` (or a directory holding a copy), exported next to the results."""
    if (Path(ref) / "ollama_asgi").is_dir():
        return Path(ref).resolve()
    dest = workdir / f"baseline-{ref.replace('/', '_')}"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref, "ollama_asgi"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def start_targets(
    args: argparse.Namespace, workdir: Path, log: Callable[[str], None], baseline_dir: Path | None
) -> tuple[Server, list[Target], dict[str, str]]:
    skipped: dict[str, str] = {}
    emulator = python_server("emulator", "emulator", free_port(), "--parallel", "256", log=workdir / "emulator.log")
    emulator.launch()
    emulator.wait_ready()
    up = emulator.url
    wanted = set(args.targets.split(",")) if args.targets else None

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    servers: dict[str, Server] = {}
    # Every Python hop runs with the same garbage-collector settings (ollama_asgi.gc_tuning, which
    # `ollama-asgi serve` applies), so the comparison is of the code; gateway-default-gc shows
    # what the gateway costs where the host keeps CPython's defaults.
    tuned = ("--gc", "tuned")
    if want("plain-httpx"):
        servers["plain-httpx"] = python_server(
            "plain-httpx", "plain-httpx", free_port(), "--upstream", up, *tuned, log=workdir / "plain-httpx.log"
        )
    if want("plain-aiohttp"):
        servers["plain-aiohttp"] = python_server(
            "plain-aiohttp", "plain-aiohttp", free_port(), "--upstream", up, *tuned, log=workdir / "plain-aiohttp.log"
        )
    gateway_args = ["--upstream", up, "--parallel", "64", "--max-queue", "512"]
    if want("gateway"):
        servers["gateway"] = python_server(
            "gateway", "gateway", free_port(), *gateway_args, *tuned, log=workdir / "gateway.log"
        )
    if want("gateway-default-gc"):
        servers["gateway-default-gc"] = python_server(
            "gateway-default-gc", "gateway", free_port(), *gateway_args, log=workdir / "gateway-default-gc.log"
        )
    if baseline_dir is not None:
        servers["gateway-baseline"] = python_server(
            "gateway-baseline",
            "gateway",
            free_port(),
            *gateway_args,
            *tuned,
            log=workdir / "gateway-baseline.log",
            package_path=str(baseline_dir),
        )
    for server in servers.values():
        server.launch()
    for server in servers.values():
        server.wait_ready()

    auth = {"Authorization": f"Bearer {BENCH_KEY}"}
    targets = [Target("direct", up, ("native", "openai"), {}, emulator, note="the emulator itself")]
    if not args.no_nginx and want("nginx"):
        nginx = prepare_nginx(emulator.port, workdir)
        if isinstance(nginx, str):
            skipped["nginx"] = nginx
            log(f"  nginx: not measured ({nginx})")
        else:
            targets.append(Target("nginx", nginx.url, ("native",), {}, nginx, version=nginx_version()))
    elif want("nginx"):
        skipped["nginx"] = "left out (--no-nginx)"
    if "plain-httpx" in servers:
        targets.append(
            Target(
                "plain-httpx",
                servers["plain-httpx"].url,
                ("native",),
                {},
                servers["plain-httpx"],
                version=_version("httpx"),
            )
        )
    if "plain-aiohttp" in servers:
        targets.append(
            Target(
                "plain-aiohttp",
                servers["plain-aiohttp"].url,
                ("native", "openai"),
                {},
                servers["plain-aiohttp"],
                version=_version("aiohttp"),
            )
        )
    if "gateway" in servers:
        targets.append(
            Target(
                "gateway",
                servers["gateway"].url + "/llm",
                ("native", "openai"),
                auth,
                servers["gateway"],
                version=_version("ollama-asgi"),
            )
        )
    if "gateway-default-gc" in servers:
        targets.append(
            Target(
                "gateway-default-gc",
                servers["gateway-default-gc"].url + "/llm",
                ("native",),
                auth,
                servers["gateway-default-gc"],
                version=_version("ollama-asgi"),
                note="the same gateway, CPython's default garbage-collector settings",
            )
        )
    if "gateway-baseline" in servers:
        targets.append(
            Target(
                "gateway-baseline",
                servers["gateway-baseline"].url + "/llm",
                ("native", "openai"),
                auth,
                servers["gateway-baseline"],
                version=f"git {args.baseline}",
            )
        )
    if not args.no_litellm and want("litellm"):
        log(f"  LiteLLM {LITELLM_VERSION}: installing into bench/.venv-litellm if needed, then starting ...")
        litellm = prepare_litellm(up, MODEL, workdir)
        if isinstance(litellm, str):
            skipped["litellm"] = litellm
            log(f"  LiteLLM: not measured ({litellm})")
        else:
            targets.append(
                Target(
                    "litellm",
                    litellm.url,
                    ("openai",),
                    {"Authorization": f"Bearer {LITELLM_KEY}"},
                    litellm,
                    version=LITELLM_VERSION,
                    note="config-only (no database), master key, ollama_chat provider",
                )
            )
    elif want("litellm"):
        skipped["litellm"] = "left out (--no-litellm)"
    return emulator, targets, skipped


# ------------------------------------------------------------------------------------------ measuring


def measure(target: Target, step: Step, emulator: Server, loadgen: str) -> dict[str, Any]:
    request = target.request(step)
    use_wrk = loadgen == "wrk" and not (step.stream and step.concurrency == 1)
    cpu0 = target.server.cpu() if target.server is not None else 0.0
    emu0 = emulator.cpu()
    wall0 = time.monotonic()
    if use_wrk:
        result = load.run_wrk(request, concurrency=step.concurrency, seconds=max(1, round(step.seconds)))
    else:
        result = asyncio.run(
            load.closed_loop(request, concurrency=step.concurrency, seconds=step.seconds, warmup=step.warmup)
        )
    wall = time.monotonic() - wall0
    cpu = (target.server.cpu() - cpu0) if target.server is not None else 0.0
    return {
        "target": target.name,
        "family": step.family,
        "step": step.name,
        "concurrency": step.concurrency,
        "tokens": step.tokens,
        "result": result.to_json(),
        "cpu_s": round(cpu, 4),
        "emulator_cpu_s": round(emulator.cpu() - emu0, 4),
        "wall_s": round(wall, 4),
    }


def warm_up(targets: list[Target], count: int) -> None:
    async def run() -> None:
        for target in targets:
            for family in target.families:
                for tokens in (0, 20):
                    step = Step("warm", family, 4, tokens, 0.0)
                    request = target.request(step)
                    result = await load.closed_loop(request, concurrency=4, seconds=count / 400, warmup=0.0)
                    if result.errors:
                        raise RuntimeError(f"{target.name} {family}: {result.error_text}")

    asyncio.run(run())


def run_steps(plan: Plan, targets: list[Target], emulator: Server, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    for repeat in range(plan.repeats):
        log(f"  repeat {repeat + 1}/{plan.repeats}")
        for step in plan.steps:
            members = [t for t in targets if step.family in t.families]
            shift = repeat % len(members) if members else 0
            for target in members[shift:] + members[:shift]:
                row = measure(target, step, emulator, plan.loadgen)
                row["repeat"] = repeat
                rows.append(row)
                res = row["result"]
                p50 = load.percentile_at(res["latency_us"], 50)
                log(
                    f"    {step.family:6} {step.name:14} {target.name:16} {res['rps']:9.1f}/s p50 {p50 / 1000:8.2f} ms"
                    f"{'  errors ' + str(res['errors']) + ' ' + res['error_text'] if res['errors'] else ''}"
                )
    return rows


def measure_overhead(
    packages: dict[str, str | None], *, repeats: int, requests: int, log: Callable[[str], None]
) -> dict[str, list[dict[str, Any]]]:
    """``bench.overhead`` for each package copy, in fresh processes, interleaved."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in packages}
    for _ in range(repeats):
        for name, path in packages.items():
            args = [sys.executable, "-m", "bench.overhead", "--requests", str(requests)]
            if path:
                args += ["--package-path", path]
            done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)
            if done.returncode != 0:
                log(f"    {name}: overhead measurement failed: {done.stderr[-300:]}")
                continue
            out[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            log(f"    {name}: {out[name][-1]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="length of each throughput step (wrk: whole seconds)"
    )
    parser.add_argument("--targets", default="", help="comma list to restrict the targets (direct always runs)")
    parser.add_argument("--steps", default="", help="comma list of family/step to restrict, e.g. native/small-c1")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--no-scenarios", action="store_true")
    parser.add_argument(
        "--baseline",
        default="",
        help="also measure the gateway at this git ref, or from a directory holding ollama_asgi/",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also time the gateway in-process (bench.overhead) from a directory holding ollama_asgi/",
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--tiny", action="store_true", help="a few requests per target (the smoke test)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results directory")
    parser.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--plots", default=str(ROOT / "docs"))
    parser.add_argument("--no-render", action="store_true")
    parser.add_argument("--render-only", default="", help="render BENCHMARKS.md from this results JSON")
    args = parser.parse_args(argv)

    from bench import report

    if args.render_only:
        report.render(json.loads(Path(args.render_only).read_text()), Path(args.markdown), Path(args.plots))
        return 0

    if args.tiny:
        args.no_litellm = args.no_nginx = True
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if load.wrk_path() and not args.tiny else "aiohttp"
    if loadgen == "wrk" and not load.wrk_path():
        from bench.external import ensure_tool

        if ensure_tool("wrk", "wrk", Path(tempfile.gettempdir()) / "bench-apt.log") is not None:
            loadgen = "aiohttp"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = out_dir / f"run-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    steps = tiny_plan() if args.tiny else full_plan(args.seconds)
    if args.steps:
        chosen = set(args.steps.split(","))
        steps = [s for s in steps if f"{s.family}/{s.name}" in chosen or s.name in chosen]
    plan = Plan(
        steps=steps,
        repeats=1 if args.tiny else args.repeats,
        warmup_requests=8 if args.tiny else 200,
        scale=None if args.no_scenarios else (scenarios.TINY if args.tiny else scenarios.FULL),
        loadgen=loadgen,
    )

    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    results: dict[str, Any] = {"machine": machine_info(), "loadgen": loadgen, "tiny": args.tiny}
    log(f"bench: {results['machine']['cores']} cores, {results['machine']['cpu']}, load generator {loadgen}")
    baseline_dir = baseline_copy(args.baseline, workdir) if args.baseline else None
    emulator, targets, skipped = start_targets(args, workdir, log, baseline_dir)
    try:
        results["targets"] = {
            t.name: {"status": "measured", "version": t.version, "note": t.note, "families": list(t.families)}
            for t in targets
        }
        for name, reason in skipped.items():
            results["targets"][name] = {"status": "not measured", "reason": reason}
        log(f"  targets: {', '.join(t.name for t in targets)}; warming up")
        warm_up(targets, plan.warmup_requests)
        results["idle_rss"] = {t.name: t.server.rss() for t in targets if t.server is not None}
        results["measurements"] = run_steps(plan, targets, emulator, log)
    finally:
        stop_all([t.server for t in targets if t.server is not None and t.server is not emulator] + [emulator])
    log("  in-process overhead (canned upstream)")
    packages: dict[str, str | None] = {"gateway": None}
    if baseline_dir is not None:
        packages["gateway-baseline"] = str(baseline_dir)
    for spec in args.variant:
        name, _, path = spec.partition("=")
        packages[name] = str(Path(path).resolve())
    results["overhead"] = measure_overhead(
        packages,
        repeats=1 if args.tiny else 3,
        requests=100 if args.tiny else 2000,
        log=log,
    )
    if plan.scale is not None:
        log("  scenarios")
        results["scenarios"] = scenarios.run_all(workdir, plan.scale, log, together=args.tiny)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["seconds"] = round(time.monotonic() - started, 1)
    results["run_dir"] = workdir.name
    results["plan"] = {"repeats": plan.repeats, "steps": [s.name + "/" + s.family for s in plan.steps]}
    path = workdir / "results.json"
    path.write_text(json.dumps(results, indent=1))
    (out_dir / "latest.json").write_text(json.dumps(results, indent=1))
    log(f"results: {path} ({results['seconds']} s)")
    if not args.no_render:
        report.render(results, Path(args.markdown), Path(args.plots))
        log(f"rendered {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
