"""The conversation-affinity benchmark: the trace it replays, what it counts, and a tiny run end to end."""

from __future__ import annotations

import pytest

from bench.affinity_trace import Turn, run, shape, summary
from ollama_asgi.testing.real import find_ollama_binary


def test_every_pass_replays_the_same_lengths_and_pauses() -> None:
    plan = shape(conversations=3, turns=4, system_words=10, user_words=5)
    assert plan == shape(conversations=3, turns=4, system_words=10, user_words=5)
    assert [len(pauses) for pauses in plan.think] == [4, 4, 4]


def _turns(affinity: bool, backends: list[str]) -> list[Turn]:
    return [Turn(affinity, 0, 0, n + 1, 10, ttft=1.0, backend=b) for n, b in enumerate(backends)]


def test_a_turn_served_away_from_its_last_backend_counts_as_moved() -> None:
    rows = summary(_turns(True, ["ollama0", "ollama0", "ollama0"]) + _turns(False, ["ollama0", "ollama1", "ollama1"]))
    assert {row["conversation_affinity"]: row["moved"] for row in rows} == {True: 0, False: 1}
    assert all(row["later_turns"] == 2 for row in rows)


@pytest.mark.bench
@pytest.mark.real_ollama
def test_a_tiny_run_measures_both_settings_over_real_ollama() -> None:
    if find_ollama_binary() is None:
        pytest.skip("no Ollama binary: set OLLAMA_BIN")
    result = run(backends=2, conversations=2, turns=2, rounds=1, system_words=20, user_words=5)
    rows = result["rows"]
    assert isinstance(rows, list) and [row["conversation_affinity"] for row in rows] == [True, False]
    assert all(row["later_turns"] == 2 for row in rows)
    assert result["model_loads_during_passes"] == 0  # the copies stay loaded: turns find the model everywhere
