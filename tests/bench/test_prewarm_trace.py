"""The pre-warming benchmark's yardsticks: Bélády's offline optimum and the trace it is computed on."""

from __future__ import annotations

from itertools import product

from bench.prewarm_trace import EMULATOR_WORKLOAD, belady, lru, make_trace


def _fewest_loads(sequence: list[str], capacity: int) -> int:
    """Every eviction choice tried: the true minimum, for sequences small enough to enumerate."""
    best = len(sequence)

    def walk(position: int, loaded: frozenset[str], loads: int) -> None:
        nonlocal best
        if loads >= best:
            return
        if position == len(sequence):
            best = loads
            return
        model = sequence[position]
        if model in loaded:
            walk(position + 1, loaded, loads)
        elif len(loaded) < capacity:
            walk(position + 1, loaded | {model}, loads + 1)
        else:
            for victim in loaded:
                walk(position + 1, (loaded - {victim}) | {model}, loads + 1)

    walk(0, frozenset(), 0)
    return best


def test_belady_evicts_the_model_needed_furthest_ahead() -> None:
    # At c, a is needed next and b later: b goes, and only b comes back (LRU would evict a).
    assert belady(["a", "b", "c", "a", "c", "b"], 2) == 4
    assert lru(["a", "b", "c", "a", "c", "b"], 2) == 5


def test_belady_loads_each_model_once_when_all_fit() -> None:
    assert belady(["a", "b", "a", "c", "b", "a"], 3) == 3


def test_belady_is_the_fewest_loads_any_eviction_order_makes() -> None:
    for sequence in (list(s) for s in product("abcd", repeat=7)):
        if len(set(sequence)) >= 3 and sequence[0] == "a":  # a sample of every shape, quick to enumerate
            assert belady(sequence, 2) == _fewest_loads(sequence, 2), sequence


def test_the_trace_interleaves_principals_that_follow_their_own_cycles() -> None:
    trace = make_trace(EMULATOR_WORKLOAD, rounds=20, gap=2.0, noise=0.0)
    assert [a.at for a in trace] == sorted(a.at for a in trace)
    for principal, cycle in EMULATOR_WORKLOAD.patterns.items():
        own = [a.model for a in trace if a.principal == principal]
        assert own == [cycle[i % len(cycle)] for i in range(20)]
    assert len({a.principal for a in trace[:4]}) == 4  # one request of each before anyone's second
