"""Fault injection: misbehaviours a gateway's tests arm for the next matching requests."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

__all__ = ["FAULT_KINDS", "RUNNER_STOPPED", "Fault", "FaultKind", "FaultQueue"]

FaultKind = Literal[
    "http_error", "midstream_error", "close_midline", "end_early", "garbage", "stall", "slow", "busy", "hang_headers"
]
FAULT_KINDS: tuple[str, ...] = (
    "http_error",
    "midstream_error",
    "close_midline",
    "end_early",
    "garbage",
    "stall",
    "slow",
    "busy",
    "hang_headers",
)

RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, "
    "check ollama server logs for details"
)


@dataclass
class Fault:
    """One misbehaviour for the next matching request.

    ``path`` is an exact path, a glob (``/api/*``) or ``None`` for any path; ``method`` narrows it
    further. ``after_lines`` counts complete NDJSON lines / SSE events already sent (a non-streamed
    body counts as one line). ``delay`` is in seconds.
    """

    path: str | None = None
    kind: FaultKind = "http_error"
    after_lines: int = 0
    status: int = 500
    message: str = RUNNER_STOPPED
    delay: float = 1.0
    method: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(FAULT_KINDS)}")

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path is None:
            return True
        return path == self.path or fnmatch.fnmatchcase(path, self.path)


@dataclass
class _Armed:
    fault: Fault
    remaining: int | None


class FaultQueue:
    """Armed faults, oldest first; each fires ``times`` times (``None`` = until cleared)."""

    def __init__(self) -> None:
        self._armed: list[_Armed] = []

    def add(self, fault: Fault, times: int | None = 1) -> None:
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        self._armed.append(_Armed(fault, times))

    def take(self, method: str, path: str) -> Fault | None:
        for armed in self._armed:
            if armed.fault.matches(method, path):
                if armed.remaining is not None:
                    armed.remaining -= 1
                    if armed.remaining == 0:
                        self._armed.remove(armed)
                return armed.fault
        return None

    def clear(self) -> None:
        self._armed.clear()

    def __len__(self) -> int:
        return len(self._armed)
