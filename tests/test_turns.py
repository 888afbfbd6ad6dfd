"""The gate of model turns on its own: what a request let through holds, and how it gives it back.

How a queue is served grouped by model, through ``Admission``, is specified in
``test_swap_scheduling``."""

from __future__ import annotations

from ollama_asgi.turns import ModelTurns, Turn


def test_a_turn_is_given_back_once() -> None:
    gate = ModelTurns(limit=1, max_delay=1.0)
    turn = gate.try_enter("A")
    assert isinstance(turn, Turn) and gate.resident == {"A": 1}
    turn.release()
    turn.release()
    assert gate.resident == {"A": 0}
