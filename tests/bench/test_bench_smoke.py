"""The benchmark harness runs end to end in its tiny mode, so it cannot rot between benchmark runs.

Only that it works is checked, never how fast anything is: speed is what ``make bench`` reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A benchmark end to end: `make bench` runs it (a 2-core machine under load makes it slow, not wrong).
pytestmark = pytest.mark.bench


def test_the_tiny_benchmark_measures_every_target_and_renders_its_report(tmp_path: Path) -> None:
    markdown = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--tiny",
            "--out",
            str(tmp_path),
            "--markdown",
            str(markdown),
            "--plots",
            str(tmp_path / "plots"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    results = json.loads((tmp_path / "latest.json").read_text())
    measured = {name for name, t in results["targets"].items() if t["status"] == "measured"}
    assert measured == {"direct", "plain-httpx", "plain-aiohttp", "gateway", "gateway-default-gc"}
    assert {r["target"] for r in results["measurements"]} == measured
    for row in results["measurements"]:
        assert row["result"]["errors"] == 0, row
        assert row["result"]["all_requests"] > 0, row
        if row["tokens"]:
            assert row["result"]["chunks"] >= row["result"]["all_requests"] * row["tokens"], row

    overhead = results["overhead"]["gateway"][0]
    assert overhead["request_us"] > 0 and overhead["chunk_us"] > 0

    scenarios = results["scenarios"]
    assert scenarios["cold_burst"]["gateway"]["upstream_loads"] == 1
    assert scenarios["cold_burst"]["gateway"]["ok"] == scenarios["cold_burst"]["gateway"]["requests"]
    assert scenarios["rss_streams"]["gateway"]["errors"] == 0
    assert scenarios["refill_gap"]["overlaps"] == 0 and scenarios["refill_gap"]["errors"] == 0

    text = markdown.read_text()
    assert "bench:generated:begin" in text and "bench:generated:end" in text
    assert "| **gateway** |" in text
