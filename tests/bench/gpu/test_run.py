"""bench/gpu/run.py's parts on a CPU host: the trace, the records, the summary, and a dry run end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bench.gpu.run import (
    ModelSpec,
    Step,
    _evicted_since,
    default_probe_sizes,
    main,
    make_models,
    make_trace,
    pass_summary,
    write_csv,
)
from ollama_asgi.testing.models import parse_name

GIB = 2**30


def step(**overrides: object) -> Step:
    values: dict[str, object] = dict(
        run="guard on", step=0, t=0.0, model="m", size_gib=1.0, status=200, ok=True, latency_s=0.1, loaded=True,
        load_s=0.5, load_gbps=2.0, evicted="", evictions=0, oom=False, used_gib=2.0, free_gib=6.0, peak_used_gib=2.0,
        resident_gib=1.5, demand_gib=1.5, models_resident=1, frag_guard=0.0, frag_default=0.0,
    )  # fmt: skip
    values.update(overrides)
    return Step(**values)  # type: ignore[arg-type]


def test_models_add_up_to_twice_the_card_within_the_spread() -> None:
    total = 80 * GIB
    models = make_models(total, count=12, ratio=2.0, spread=0.35)
    assert len(models) == 12 and len({m.name for m in models}) == 12
    assert sum(m.size for m in models) == pytest.approx(2 * total, rel=0.01)
    mean = 2 * total / 12
    assert min(m.size for m in models) >= 0.64 * mean and max(m.size for m in models) <= 1.35 * mean
    assert all(m.size % 2**20 == 0 and parse_name(m.name) is not None for m in models)
    with pytest.raises(ValueError):
        make_models(total, count=1)


def test_the_trace_visits_every_model_first_and_is_reproducible() -> None:
    models = [ModelSpec(f"m{i}", GIB) for i in range(10)]
    trace = make_trace(models, 30, seed=3)
    assert len(trace) == 30 and sorted(trace[:10]) == sorted(m.name for m in models)
    assert trace == make_trace(models, 30, seed=3) and trace != make_trace(models, 30, seed=4)
    assert any(a == b for a, b in zip(trace[10:], trace[11:], strict=False))  # some repeats: hits
    assert make_trace(models, 4) == make_trace(models, 30)[:4]


def test_probe_sizes_scale_with_the_card() -> None:
    assert default_probe_sizes(80 * GIB) == ([2, 4, 8, 16], [1, 2, 4, 8, 16])
    cold, warm = default_probe_sizes(8 * GIB)
    assert cold == [0.2, 0.4, 0.8, 1.6] and warm[-1] == 1.6


def test_csv_rows_keep_their_types_readable(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    write_csv(path, [step(frag_guard=None, oom=True, load_s=1 / 3), step(step=1)])
    rows = list(csv.DictReader(path.open()))
    assert rows[0]["frag_guard"] == "" and rows[0]["oom"] == "1" and rows[0]["load_s"] == "0.3333"
    assert rows[1]["step"] == "1" and rows[1]["oom"] == "0"
    write_csv(tmp_path / "empty.csv", [])
    assert (tmp_path / "empty.csv").read_text() == ""


def test_the_summary_counts_failures_and_checks_the_budget() -> None:
    steps = [
        step(peak_used_gib=4.4, frag_guard=0.001),
        step(step=1, ok=False, status=500, oom=True, loaded=False, load_s=0.0),
        step(step=2, evictions=2, peak_used_gib=3.0, frag_guard=0.003),
    ]
    summary = pass_summary(steps, budget=4 * GIB, baseline=GIB // 2)
    assert (summary["failed"], summary["out_of_memory"], summary["evictions"], summary["loads"]) == (1, 1, 2, 2)
    assert summary["peak_over_baseline_gib"] == pytest.approx(3.9)
    assert summary["within_budget"] is True and summary["max_frag_guard"] == 0.003
    assert pass_summary(steps, budget=3 * GIB, baseline=GIB // 2)["within_budget"] is False
    assert "within_budget" not in pass_summary(steps, budget=None, baseline=0)


def test_evictions_are_read_from_the_guard_history_by_time() -> None:
    history: list[dict[str, object]] = [
        {"time": 10.0, "evicted": ["old"]},
        {"time": 20.0, "evicted": ["a:latest", "b"], "load": "new:latest"},
        {"time": 30.0, "evicted": []},
        {"time": "bad", "evicted": ["x"]},
    ]
    assert _evicted_since(history, 15.0) == ["a", "b"]
    assert _evicted_since(history, 15.0, load="new") == ["a", "b"] and _evicted_since(history, 15.0, load="x") == []


def test_a_dry_run_on_a_simulated_device_shows_the_guard_holding(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--simulate", "1", "--out", str(out), "--weights-dir", str(tmp_path / "w"), "--steps", "16"]
    argv += ["--models", "10", "--nvml-calls", "200", "--repeats", "1"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    on, off = summary["passes"]["guard on"], summary["passes"]["guard off"]
    assert set(summary["passes"]) == {"guard on", "guard off", "guard on, 2 clients"}
    assert on["out_of_memory"] == 0 and on["failed"] == 0 and on["within_budget"] and on["evictions"] > 0
    assert off["out_of_memory"] > 0
    assert on["max_demand_gib"] > summary["facts"]["total_gib"]  # the trace is larger than the device
    assert {"warm", "cold"} <= set(summary["fits"])
    rows = list(csv.DictReader((out / "trace.csv").open()))
    assert len(rows) == 48 and {r["run"] for r in rows} == {"guard on", "guard off", "guard on, 2 clients"}
    assert (out / "probes.csv").exists() and (out / "memory.png").exists() and (out / "loads.png").exists()
