"""The instruction-count benchmark runs end to end on a few requests, so it cannot rot.

What is checked is that it counts, not what it counts: the figures are BENCHMARKS.md's.
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


def test_instructions_per_request_and_per_chunk_are_counted_for_the_plain_proxy_and_the_gateway() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--requests", "20", "--warmup", "5", "--streams", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    counts = result["instructions_per_request"]
    assert set(counts) == {"plain-aiohttp", "gateway"}
    # A request through any Python hop costs hundreds of thousands of instructions; the gateway
    # does everything the plain proxy does and more.
    assert 100_000 < counts["plain-aiohttp"] < counts["gateway"]
    assert result["ratio_to_plain"]["gateway"] == round(counts["gateway"] / counts["plain-aiohttp"], 3)
    # One more relayed token costs thousands of instructions (a read, a parse, a write), far less
    # than a whole request.
    chunks = result["instructions_per_chunk"]
    assert set(chunks) == {"plain-aiohttp", "gateway"}
    for target, per_chunk in chunks.items():
        assert 1_000 < per_chunk < counts[target] / 2, (target, per_chunk)
