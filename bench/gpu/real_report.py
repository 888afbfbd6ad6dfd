"""Tables, CSV files and plots from the JSON that ``bench/gpu/real_ollama.py`` writes.

    python bench/gpu/real_report.py RESULTS_DIR... --out docs/gpu/real

Reads ``loads.json``, ``churn.json``, ``coldstart.json``, ``overload.json``, ``prefix.json``,
``shared.json``, ``affinity.json`` and ``env.txt`` from each directory given (later directories win for a phase), writes one CSV per
phase, ``real-*.png``, and prints the Markdown tables used in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GIB = 1 << 30


def load(dirs: Sequence[Path]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for d in dirs:
        for name in ("loads", "churn", "coldstart", "overload", "prefix", "shared", "affinity"):
            path = d / f"{name}.json"
            if path.exists():
                found[name] = json.loads(path.read_text())
                found.setdefault(f"all-{name}", []).append(found[name])
        env = d / "env.txt"
        if env.exists():
            found.setdefault("env", []).append(env.read_text())
    return found


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares ``seconds = base + bytes / rate``: (base seconds, rate in bytes per second)."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - slope * mx, 1.0 / slope if slope > 0 else float("inf")


def report_loads(data: dict[str, Any], out: Path, h2d: float | None) -> list[str]:
    rows = data["rows"]
    write_csv(out / "real-loads.csv", rows)
    lines = [
        "| model (shape) | GB | cold load | warm loads | file read cold / warm | "
        "copy floor at pinned H2D | size_vram | NVML growth |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    models = data["models"]
    for name in sorted({r["model"] for r in rows}, key=lambda n: models[n]["bytes"]):
        mine = [r for r in rows if r["model"] == name]
        size = mine[0]["bytes"]
        cold = [r["load_s"] for r in mine if r["cache"] == "cold"]
        warm = [r["load_s"] for r in mine if r["cache"] == "warm"]
        floor = size / (h2d * 1e9) if h2d else None
        lines.append(
            f"| {name} ({models[name].get('shape_of', '')}) | {size / 1e9:.2f} | "
            f"{', '.join(f'{s:.2f} s' for s in cold)} | {', '.join(f'{s:.2f} s' for s in warm)} | "
            f"{size / mine[0]['read_cold_s'] / 1e9:.2f} / {size / mine[0]['read_warm_s'] / 1e9:.2f} GB/s | "
            f"{ms(floor)} | {fmt((mine[-1]['size_vram'] or 0) / GIB)} GiB | "
            f"{fmt((mine[-1]['nvml_delta'] or 0) / GIB)} GiB |"
        )
    lines.append("")
    for cache in ("warm", "cold"):
        got = fit([(r["bytes"], r["load_s"]) for r in rows if r["cache"] == cache and r["status"] == 200])
        if got:
            lines.append(f"- fit, {cache} page cache: {got[0]:.2f} s + size / {got[1] / 1e9:.2f} GB/s")
    return lines


def plot_loads(data: dict[str, Any], out: Path, h2d: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cache, marker in (("cold", "o"), ("warm", "s")):
        pts = [(r["bytes"] / 1e9, r["load_s"]) for r in rows if r["cache"] == cache and r["status"] == 200]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, label=f"Ollama load, {cache} page cache")
    sizes = sorted({r["bytes"] for r in rows})
    first = {r["model"]: r for r in rows}
    reads = sorted((r["bytes"] / 1e9, r["read_cold_s"], r["read_warm_s"]) for r in first.values())
    if reads:
        xs = [x for x, _, _ in reads]
        ax.plot(xs, [c for _, c, _ in reads], "--", label="reading the file alone, cold")
        ax.plot(xs, [w for _, _, w in reads], ":", label="reading the file alone, warm")
    if h2d:
        ax.plot([s / 1e9 for s in sizes], [s / (h2d * 1e9) for s in sizes], "k-", label=f"H2D copy at {h2d:.0f} GB/s")
    ax.set_xlabel("model file (GB, F16)")
    ax.set_ylabel("seconds")
    ax.set_title("Model load time on a real Ollama v0.24.0 (CUDA)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "real-loads.png", dpi=110)
    plt.close(fig)


def report_churn(data: dict[str, Any], out: Path) -> list[str]:
    steps = [s for run in data["runs"] for s in run["steps"]]
    write_csv(out / "real-churn.csv", steps)
    lines = [
        "| pass | requests ok | failed (OOM) | runner starts | models evicted | steps on partial CPU offload | "
        "peak NVML used | median / max latency |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in data["runs"]:
        s = run["summary"]
        lat = s["latency_ok"]
        lines.append(
            f"| {run['label']} | {s['ok']} / {s['requests']} | {s['failed']} ({s['oom']}) | {s['runner_starts']} | "
            f"{s['evictions_seen']} | {s['offloaded_steps']} | {fmt(s['peak_used_gib'], 1)} GiB | "
            f"{ms(lat['p50'])} / {ms(lat['max'])} |"
        )
    return lines


def plot_churn(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in data["runs"]:
        steps = run["steps"]
        ax.plot([s["step"] for s in steps], [s["peak_gib"] for s in steps], marker=".", label=run["label"])
    ax.set_xlabel("trace step")
    ax.set_ylabel("peak NVML used during the step (GiB)")
    ax.set_title("Model churn over a trace of models adding up to ~2x the usable memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "real-churn.png", dpi=110)
    plt.close(fig)


def report_coldstart(data: dict[str, Any], out: Path, suffix: str = "") -> list[str]:
    steps = [s for run in data["runs"] for s in run["steps"]]
    write_csv(out / f"real-coldstart{suffix}.csv", steps)
    pattern = " → ".join(dict.fromkeys(data["trace"]))
    lines = [
        f"Pattern {pattern}, {len(data['trace'])} requests, {data['think_s']:g} s of think time.",
        "",
        "| pass | requests ok | cold starts (model not resident on arrival) | latency of ok, p50 / p95 / max | "
        "mean latency of ok | runner starts | trace wall time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in data["runs"]:
        s = run["summary"]
        lat = s["latency"]
        lines.append(
            f"| {run['label']} | {s['ok']} / {s['requests']} | {s['cold_starts']} | {ms(lat['p50'])} / {ms(lat['p95'])} / "
            f"{ms(lat['max'])} | {ms(lat['mean'])} | {s['runner_starts']} | {s['wall_s']:.1f} s |"
        )
    return lines


def plot_coldstart(data: dict[str, Any], out: Path, suffix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    runs = data["runs"]
    width = 0.8 / max(1, len(runs))
    for k, run in enumerate(runs):
        steps = run["steps"]
        bars = ax.bar(
            [s["step"] + k * width for s in steps], [s["latency_s"] for s in steps], width, label=run["label"]
        )
        for bar, step in zip(bars, steps, strict=True):
            if step["status"] != 200:  # a failed request: hatched, its status above it
                bar.set_hatch("//")
                bar.set_edgecolor("black")
                ax.annotate(str(step["status"]), (bar.get_x() + width / 2, bar.get_height()), ha="center", fontsize=7)
    ax.set_xlabel("request (the pipeline's three models in turn)")
    ax.set_ylabel("latency (s)")
    ax.set_title(f"Cold starts, {' → '.join(dict.fromkeys(data['trace']))}, with and without pre-warming")
    ax.grid(alpha=0.3, axis="y")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.15)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    fig.tight_layout()
    fig.savefig(out / f"real-coldstart{suffix}.png", dpi=110)
    plt.close(fig)


def report_overload(data: dict[str, Any], out: Path) -> list[str]:
    rows = [
        {"run": run["label"], "sent_at_s": r[0], "status": r[1], "latency_s": r[2]}
        for run in data.get("runs", [])
        for r in run["rows"]
    ]
    write_csv(out / "real-overload.csv", rows)
    lines = [
        f"Capacity {data['capacity_rps']:.1f} requests/s (closed loop); offered {data['offered_rps']:.1f}/s "
        f"(Poisson) for {data['window_s']:.0f} s; SLO {data['slo_s']:.1f} s.",
        "",
        "| pass | sent | answers | p50 / p99 of successful | goodput (ok within SLO, per s of window) | "
        "drain after the window |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for run in data.get("runs", []):
        lat = run["ok_latency"]
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(run["statuses"].items()))
        lines.append(
            f"| {run['label']} | {run['sent']} | {statuses} | {ms(lat['p50'])} / {ms(lat['p99'])} | "
            f"{run['goodput_rps']:.1f}/s | {run['drain_s']:.1f} s |"
        )
    return lines


def plot_overload(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in data.get("runs", []):
        ok = [(r[0], r[2]) for r in run["rows"] if r[1] == 200]
        shed = [(r[0], r[2]) for r in run["rows"] if r[1] != 200]
        if ok:
            ax.scatter(*zip(*ok, strict=True), s=4, label=f"{run['label']}: answered")
        if shed:
            ax.scatter(*zip(*shed, strict=True), s=4, marker="x", label=f"{run['label']}: refused")
    ax.set_yscale("log")
    ax.set_xlabel("sent at (s)")
    ax.set_ylabel("latency (s)")
    ax.set_title("Three times capacity: every request's latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, markerscale=3)
    fig.tight_layout()
    fig.savefig(out / "real-overload.png", dpi=110)
    plt.close(fig)


def report_prefix(data: dict[str, Any], out: Path) -> list[str]:
    rows = [{"run": run["label"], **r} for run in data["runs"] for r in run["rows"]]
    write_csv(out / "real-prefix.csv", rows)
    lines = [
        f"System prompt of {data['system_chars']} characters, model {data['model']}.",
        "",
        "| pass | load (s) | TTFT, first request | TTFT, later requests | prompt eval, first request |",
        "| --- | --- | --- | --- | --- |",
    ]
    for run in data["runs"]:
        r = run["rows"]
        later = ", ".join(ms(x["ttft_s"]) for x in r[1:])
        lines.append(
            f"| {run['label']} | {run['load_s']:.2f} | {ms(r[0]['ttft_s'])} | {later} | {ms(r[0]['prompt_eval_s'])} |"
        )
    return lines


AFFINITY_SETTINGS = {
    "direct": "direct, round-robin",
    "off": "gateway, conversation_affinity off",
    "on": "gateway, conversation_affinity on",
}


def affinity_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every turn of every pass, with whether it went to another server than its conversation's last turn."""
    rows = []
    for run in data["runs"]:
        last: dict[int, str] = {}
        for r in sorted(run["rows"], key=lambda r: (r["conversation"], r["turn"])):
            moved = r["turn"] > 1 and last.get(r["conversation"]) not in (None, r["backend"])
            last[r["conversation"]] = r["backend"]
            rows.append(
                {
                    "pass": run["pass"],
                    "setting": run["label"],
                    "conversation": r["conversation"],
                    "turn": r["turn"],
                    "server": r["backend"],
                    "moved": moved,
                    "status": r["status"],
                    "ttft_s": r["ttft_s"],
                    "total_s": r["total_s"],
                    "prompt_eval_count": r["prompt_eval_count"],
                    "prompt_eval_s": r["prompt_eval_s"],
                }
            )
    return rows


def report_affinity(data: dict[str, Any], out: Path) -> list[str]:
    import statistics

    rows = affinity_rows(data)
    write_csv(out / "real-affinity.csv", rows)
    lines = [
        f"Model {data['model']}, {data['conversations']} conversations x {data['turns']} turns, "
        f"system prompt {data['system_words']} tokens, questions {data['user_words']} tokens.",
        "",
        "| setting | turns moved | TTFT p50 | TTFT p95 | prompt eval p50 | prompt eval, all turns |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for setting, name in AFFINITY_SETTINGS.items():
        later = [r for r in rows if r["setting"] == setting and r["turn"] > 1 and r["status"] == 200]
        if not later:
            continue
        ttft = sorted(r["ttft_s"] for r in later)
        p95 = ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))]
        evals = [r["prompt_eval_s"] for r in later]
        lines.append(
            f"| {name} | {sum(r['moved'] for r in later)} of {len(later)} | {ms(statistics.median(ttft))} "
            f"| {ms(p95)} | {ms(statistics.median(evals))} | {sum(evals):.1f} s |"
        )
    return lines


def plot_affinity(data: dict[str, Any], out: Path) -> None:
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = affinity_rows(data)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for setting, name in AFFINITY_SETTINGS.items():
        mine = [r for r in rows if r["setting"] == setting and r["status"] == 200]
        turns = sorted({r["turn"] for r in mine})
        if turns:
            medians = [statistics.median(r["ttft_s"] for r in mine if r["turn"] == t) * 1000 for t in turns]
            ax.plot(turns, medians, marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("turn of the conversation")
    ax.set_ylabel("time to first token, median (ms)")
    ax.set_title(f"{data['model']} on two servers sharing one GPU: conversations' turns")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "real-affinity.png", dpi=110)
    plt.close(fig)


def report_shared(runs: Sequence[dict[str, Any]], out: Path) -> list[str]:
    """Two servers on one card: every pass of every run given, one row each, in the order run."""
    steps = [{"repeat": i + 1, **s} for i, data in enumerate(runs) for run in data["runs"] for s in run["steps"]]
    write_csv(out / "real-shared.csv", steps)
    lines = [
        "| run | card | pass | requests ok | failed (out of memory) | models partly on the CPU | runner starts "
        "| peak NVML used | mean / p50 / max latency of ok | trace wall time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, data in enumerate(runs):
        card = str(data.get("device", "")).replace("NVIDIA ", "").replace(" 80GB HBM3", "")
        for run in data["runs"]:
            s = run["summary"]
            lat = s["latency_ok"]
            starts = sum(s["runner_starts"].values())
            lines.append(
                f"| {i + 1} | {card} | {run['label']} | {s['ok']} / {s['requests']} | {s['failed']} ({s['oom']}) "
                f"| {', '.join(s['offloaded_models']) or 'none'} | {starts} | {s['peak_used_gib']:.1f} GiB "
                f"| {ms(lat['mean'])} / {ms(lat['p50'])} / {ms(lat['max'])} | {s['wall_s']:.1f} s |"
            )
    return lines


def h2d_rate(found: dict[str, Any]) -> float | None:
    for text in found.get("env", []):
        start = text.find("{", text.find("ballast:"))
        if start >= 0:
            try:
                return float(json.loads(text[start : text.rindex("}") + 1])["h2d_pinned_gbps"])
            except (ValueError, KeyError):
                continue
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    found = load(args.dirs)
    h2d = h2d_rate(found)
    for name, table, draw in (
        ("loads", lambda d: report_loads(d, args.out, h2d), lambda d: plot_loads(d, args.out, h2d)),
        ("churn", lambda d: report_churn(d, args.out), lambda d: plot_churn(d, args.out)),
        ("overload", lambda d: report_overload(d, args.out), lambda d: plot_overload(d, args.out)),
        ("prefix", lambda d: report_prefix(d, args.out), None),
        ("affinity", lambda d: report_affinity(d, args.out), lambda d: plot_affinity(d, args.out)),
    ):
        if name not in found:
            continue
        print(f"\n### {name} ({found[name].get('device')})\n")
        print("\n".join(table(found[name])))
        if draw is not None:
            draw(found[name])
    if "all-shared" in found:
        print("\n### shared\n")
        print("\n".join(report_shared(found["all-shared"], args.out)))
    for i, data in enumerate(found.get("all-coldstart", [])):  # one per run, each its own pattern
        suffix = f"-{i + 1}" if i else ""
        print(f"\n### coldstart{suffix} ({data.get('device')})\n")
        print("\n".join(report_coldstart(data, args.out, suffix)))
        plot_coldstart(data, args.out, suffix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
