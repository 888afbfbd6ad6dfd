"""Garbage-collector settings for a process that relays many short requests.

With CPython's default young-generation threshold (700 allocations), a busy gateway collects
thousands of times a second, and every request still in flight at a collection is promoted to
an older generation. At 64 concurrent requests the full collections that scan the whole heap
then come several times a second: measured with ``gc.callbacks``, the collector took 29 µs per
request there (BENCHMARKS.md, *Second round*). Freezing what exists at startup (the host app's
modules, classes and settings) takes it out of every later scan, and a larger young generation
lets a request's objects die by reference counting before a collection ever looks at them.

This is process-wide, so it is the host's decision: a mounted gateway only does it with
``Settings.tune_gc``; ``ollama-asgi serve``, which owns its process, does it by default.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_gc"]

YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)


def tune_gc(young: int = YOUNG_THRESHOLD) -> tuple[int, int, int]:
    """Freeze the objects alive now and raise the young-generation threshold; return the old thresholds.

    A threshold the host already raised higher is kept. Objects frozen here are never collected,
    which is what startup objects need anyway; call it once the app is built, not per request.
    """
    before = gc.get_threshold()
    gc.freeze()
    if before[0] and before[0] < young:  # 0 means automatic collection is off: leave it off
        gc.set_threshold(young, before[1], before[2])
    return before
