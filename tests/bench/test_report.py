"""How the benchmark report judges a target: by the median of the per-repeat (paired) ratios."""

from __future__ import annotations

from typing import Any

from bench.report import Figures, targets_check


def _row(target: str, repeat: int, rps: float) -> dict[str, Any]:
    result = {"rps": rps, "errors": 0, "latency_us": [], "ttfc_us": [], "all_requests": 1, "chunks": 0, "tool": "wrk"}
    return {"family": "native", "step": "small-c64", "target": target, "repeat": repeat, "cpu_s": 0.0, "result": result}


def _figures(gateway: list[float], plain: list[float]) -> Figures:
    rows = [_row("gateway", i, v) for i, v in enumerate(gateway)]
    rows += [_row("plain-aiohttp", i, v) for i, v in enumerate(plain)]
    return Figures({"measurements": rows})


def test_a_drifting_machine_is_judged_by_the_pairs_not_by_the_ratio_of_medians() -> None:
    # The machine slows down repeat by repeat; in every repeat the gateway serves 0.70x the plain proxy.
    plain = [3000.0, 2600.0, 2200.0, 1800.0, 1400.0]
    gateway = [p * 0.70 for p in plain]
    gateway[1] = 1400.0  # one repeat that caught a slow stretch on the gateway's turn only: 0.54x
    table = targets_check(_figures(gateway, plain))
    row = next(line for line in table.splitlines() if "c=64" in line)
    assert "**0.70×** paired" in row
    assert "per repeat 0.54, 0.70, 0.70, 0.70, 0.70" in row
    # The gateway's median comes from another repeat than the plain proxy's: their ratio says 0.64x.
    assert "ratio of medians 0.64×" in row
    assert row.rstrip(" |").endswith("met")


def test_a_target_missed_in_most_pairs_is_not_met() -> None:
    plain = [3000.0, 3000.0, 3000.0]
    gateway = [1800.0, 2400.0, 1900.0]  # 0.60, 0.80, 0.63
    row = next(line for line in targets_check(_figures(gateway, plain)).splitlines() if "c=64" in line)
    assert "**0.63×** paired" in row
    assert row.rstrip(" |").endswith("not met")


def test_one_repeat_shows_the_plain_ratio() -> None:
    row = next(line for line in targets_check(_figures([2100.0], [3000.0])).splitlines() if "c=64" in line)
    assert "= 0.70×" not in row and ": 0.70×" in row and "paired" not in row
