"""Conversation affinity against real Ollama: time to first token of later turns of long conversations.

Usage: ``OLLAMA_BIN=/path/to/ollama python -m bench.affinity_trace [--backends 2] [--conversations 4]
[--turns 6] [--rounds 2]``; prints Markdown tables and writes ``bench/results/affinity_trace.json``.

Real Ollama servers (``OLLAMA_NUM_PARALLEL=2`` each) all hold the suite's ``medium`` model (204 MB,
one runner thread, so prompt evaluation takes measurable time on a CPU), loaded directly on every
one of them before the run, as spill or copies would leave it. Several conversations run at once,
each a system prompt and ``--turns`` turns, streamed through ``ollama-asgi serve`` with
``parallel=2``; between turns a client reads its answer for a moment (seeded think times). Two
gateways run over the same servers, ``conversation_affinity`` on and off, and replay the same trace
in turn (on, off, off, on, ...). Every conversation of every pass has words of its own, so no pass
finds another's prefix cached; the lengths and think times are the same.

A turn's time to first token is mostly Ollama evaluating the part of the prompt its slot's cache
does not hold: on the backend that served the last turn, the new message; elsewhere the whole
history. ``prompt_eval_duration`` comes from Ollama's final chunk (this Ollama's
``prompt_eval_count`` counts the whole prompt, cached or not), and the backend of each turn from the
gateway's access log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, cast

import httpx

from bench.procs import start_gateway_process, stop_process
from ollama_asgi.testing.real import RealOllama, find_ollama_binary

API_KEY = "bench-affinity-key-1"
MODEL = "medium"
NUM_CTX = 4096
# Words that are one token each in the fixture models' vocabulary: a text of n words is n tokens.
WORDS = ("Why", "is", "the", "sky", "blue", "Hello", "hello", "world", "weather", "Paris", "What")
_HOST = (
    "import logging, sys; from ollama_asgi.cli import main; "
    "logging.basicConfig(level=logging.WARNING, format='%(message)s'); "
    "logging.getLogger('ollama_asgi.access').setLevel(logging.INFO); sys.exit(main(sys.argv[1:]))"
)


@dataclass(frozen=True)
class Shape:
    """The trace every pass replays: how long each part is and how long each client pauses."""

    conversations: int
    turns: int
    system_words: int
    user_words: int
    think: tuple[tuple[float, ...], ...]  # per conversation, the pause before each turn


@dataclass
class Turn:
    affinity: bool
    run: int
    conversation: int
    turn: int
    prompt_words: int
    ttft: float = 0.0
    total: float = 0.0
    prompt_eval_count: int = 0
    prompt_eval_duration: float = 0.0
    backend: str = ""
    request_id: str = ""


def shape(conversations: int, turns: int, system_words: int, user_words: int, seed: int = 11) -> Shape:
    rng = random.Random(seed)
    think = tuple(
        tuple([rng.uniform(0.0, 0.5)] + [rng.uniform(0.3, 2.0) for _ in range(turns - 1)]) for _ in range(conversations)
    )
    return Shape(conversations, turns, system_words, user_words, think)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


# -- processes ----------------------------------------------------------------------------------------


def start_backends(binary: str, count: int, models_dir: Path, fixtures_dir: Path) -> list[RealOllama]:
    servers: list[RealOllama] = []
    try:
        for _ in range(count):
            server = RealOllama(
                binary, env={"OLLAMA_NUM_PARALLEL": "2"}, models_dir=models_dir, fixtures_dir=fixtures_dir
            )
            servers.append(server)
            server.start()
            server.create([MODEL])
            status, answer = server.request(
                "POST",
                "/api/generate",
                {"model": MODEL, "prompt": "", "keep_alive": "30m", "options": {"num_ctx": NUM_CTX}},
                timeout=300,
            )
            if status != 200:
                raise RuntimeError(f"loading {MODEL} failed: {answer}")
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def start_gateway(urls: list[str], affinity: bool, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    """``ollama-asgi serve`` with its access log (one JSON line per request) on ``log``."""
    env = {
        "OLLAMA_ASGI_UPSTREAMS": ",".join(urls),
        "OLLAMA_ASGI_API_KEYS": f"bench={API_KEY}",
        "OLLAMA_ASGI_PARALLEL": "2",
        "OLLAMA_ASGI_MAX_QUEUE": "100",
        "OLLAMA_ASGI_QUEUE_TIMEOUT": "600",
        "OLLAMA_ASGI_PS_INTERVAL": "1",
        "OLLAMA_ASGI_PREWARM": "false",
        "OLLAMA_ASGI_CONVERSATION_AFFINITY": "true" if affinity else "false",
    }
    return start_gateway_process(env, stderr=log, command=(sys.executable, "-c", _HOST))


def backends_of(log_path: Path, names: dict[str, str]) -> dict[str, str]:
    """Request id to the server that served it, from the gateway's access log."""
    found: dict[str, str] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("route") == "chat" and entry.get("backend"):
            found[str(entry["request_id"])] = names.get(str(entry["backend"]), str(entry["backend"]))
    return found


# -- clients ------------------------------------------------------------------------------------------


async def converse(client: httpx.AsyncClient, plan: Shape, affinity: bool, run: int, index: int) -> list[Turn]:
    rng = random.Random(f"{run}-{affinity}-{index}")  # words of its own; lengths and pauses from the shape
    messages = [{"role": "system", "content": _text(rng, plan.system_words)}]
    turns = []
    for n in range(plan.turns):
        await asyncio.sleep(plan.think[index][n])
        messages.append({"role": "user", "content": _text(rng, plan.user_words)})
        turn = Turn(affinity, run, index, n + 1, sum(len(m["content"].split()) for m in messages))
        body = {"model": MODEL, "messages": messages, "stream": True, "options": {"num_ctx": NUM_CTX, "num_predict": 8}}
        started = time.perf_counter()
        answer = []
        async with client.stream("POST", "/api/chat", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"turn {n + 1} answered {response.status_code}: {(await response.aread())[:300]!r}")
            turn.request_id = response.headers.get("x-request-id", "")
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                chunk = json.loads(line)
                if not turn.ttft:
                    turn.ttft = time.perf_counter() - started
                answer.append(chunk.get("message", {}).get("content", ""))
                if chunk.get("done"):
                    turn.prompt_eval_count = int(chunk.get("prompt_eval_count", 0))
                    turn.prompt_eval_duration = chunk.get("prompt_eval_duration", 0) / 1e9
        turn.total = time.perf_counter() - started
        messages.append({"role": "assistant", "content": "".join(answer)})
        turns.append(turn)
    return turns


async def replay(url: str, plan: Shape, affinity: bool, run: int) -> list[Turn]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        done = await asyncio.gather(*(converse(client, plan, affinity, run, i) for i in range(plan.conversations)))
    return [turn for turns in done for turn in turns]


# -- report -------------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(turns: list[Turn]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for affinity in (True, False):
        mine = [t for t in turns if t.affinity is affinity]
        later = [t for t in mine if t.turn >= 2]
        moved = sum(
            1
            for t in later
            if t.backend
            != next(p.backend for p in mine if (p.run, p.conversation, p.turn) == (t.run, t.conversation, t.turn - 1))
        )
        ttft = [t.ttft for t in later]
        evals = [t.prompt_eval_duration for t in later]
        rows.append(
            {
                "conversation_affinity": affinity,
                "later_turns": len(later),
                "moved": moved,
                "ttft_p50_s": round(statistics.median(ttft), 2),
                "ttft_p95_s": round(_pct(ttft, 0.95), 2),
                "ttft_mean_s": round(statistics.fmean(ttft), 2),
                "prompt_eval_p50_s": round(statistics.median(evals), 2),
                "prompt_eval_p95_s": round(_pct(evals, 0.95), 2),
                "prompt_eval_total_s": round(sum(evals), 1),
                "prompt_eval_count_mean": round(statistics.fmean(t.prompt_eval_count for t in later)),
                "first_turn_ttft_p50_s": round(statistics.median(t.ttft for t in mine if t.turn == 1), 2),
                "wall_s": 0.0,
            }
        )
    return rows


def run(
    backends: int, conversations: int, turns: int, rounds: int, system_words: int, user_words: int
) -> dict[str, object]:
    binary = find_ollama_binary()
    if binary is None:
        raise SystemExit("no Ollama binary: set OLLAMA_BIN=/path/to/ollama")
    plan = shape(conversations, turns, system_words, user_words)
    work = Path(tempfile.mkdtemp(prefix="affinity-trace-"))
    try:
        servers = start_backends(binary, backends, work / "models", work / "fixtures")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    names = {}
    gateways: dict[bool, tuple[subprocess.Popen[bytes], str, Path]] = {}
    all_turns: list[Turn] = []
    walls = {True: 0.0, False: 0.0}
    try:
        for affinity in (True, False):
            log_path = work / f"gateway-{affinity}.log"
            with log_path.open("wb") as log:
                process, url = start_gateway([s.url for s in servers], affinity, log)
            gateways[affinity] = (process, url, log_path)
        for i, server in enumerate(servers):
            names[f"backend-{i}"] = f"ollama{i}"
            names[server.url] = f"ollama{i}"
        time.sleep(3)  # each gateway's /api/ps poll sees the model loaded everywhere
        loads_before = sum(s.loads() for s in servers)
        order = [on for r in range(rounds) for on in ((True, False) if r % 2 == 0 else (False, True))]
        for n, affinity in enumerate(order):
            process, url, log_path = gateways[affinity]
            started = time.perf_counter()
            done = asyncio.run(replay(url, plan, affinity, n))
            walls[affinity] += time.perf_counter() - started
            served = backends_of(log_path, names)
            for turn in done:
                turn.backend = served.get(turn.request_id, "?")
            all_turns.extend(done)
            print(
                f"pass {n + 1}/{len(order)}: affinity {'on' if affinity else 'off'}, {walls[affinity]:.0f}s", flush=True
            )
        reloads = sum(s.loads() for s in servers) - loads_before
    finally:
        for process, _, _ in gateways.values():
            stop_process(process)
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)  # the model files: some hundreds of MB a run
    rows = summary(all_turns)
    for row in rows:
        row["wall_s"] = round(walls[bool(row["conversation_affinity"])], 1)
    return {
        "backends": backends,
        "conversations": conversations,
        "turns": turns,
        "rounds": rounds,
        "system_words": system_words,
        "user_words": user_words,
        "model_loads_during_passes": reloads,
        "rows": rows,
        "turns_detail": [asdict(t) for t in all_turns],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", type=int, default=2)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of passes, on/off then off/on")
    parser.add_argument("--system-words", type=int, default=300)
    parser.add_argument("--user-words", type=int, default=60)
    args = parser.parse_args()
    result = run(args.backends, args.conversations, args.turns, args.rounds, args.system_words, args.user_words)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "affinity_trace.json").write_text(json.dumps(result, indent=2))
    print(
        f"\n{result['backends']} backends, {result['conversations']} conversations x {result['turns']} turns, "
        f"{args.rounds * 2} passes; model loads during the passes: {result['model_loads_during_passes']}\n"
    )
    print(
        "| affinity | turns ≥2 | moved backend | TTFT p50 s | TTFT p95 s | TTFT mean s | prompt eval p50 s "
        "| prompt eval p95 s | prompt eval total s | prompt_eval_count mean | turn 1 TTFT p50 s | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in cast(list[dict[str, object]], result["rows"]):
        print("| " + " | ".join(str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
