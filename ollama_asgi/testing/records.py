"""What the emulator observed: request records, counters and loaded-model snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["EmulatorStats", "LoadedModelInfo", "RecordedRequest"]


@dataclass
class RecordedRequest:
    """A request as the emulator received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    json: Any
    time: float
    """``time.monotonic()`` when the body had been read."""


@dataclass
class EmulatorStats:
    """Counters since construction or the last ``clear()``."""

    loads: int = 0
    unloads: int = 0
    reloads: int = 0
    aborted_loads: int = 0
    evictions: int = 0
    cancellations: int = 0
    """Inference requests whose client went away before the response was complete."""
    active: int = 0
    """Requests holding a parallel slot (generating or embedding) right now."""
    max_active: int = 0
    completed: int = 0
    rejected_busy: int = 0

    def reset(self) -> None:
        for item in fields(self):
            if item.name != "active":
                setattr(self, item.name, 0)
        self.max_active = self.active

    def enter(self) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)

    def leave(self) -> None:
        self.active -= 1


@dataclass(frozen=True)
class LoadedModelInfo:
    """A loaded (or loading) model, as ``emu.loaded_models()`` reports it."""

    name: str
    digest: str
    num_ctx: int
    parallel: int
    size_vram: int
    expires_at: str
    """RFC 3339, as ``/api/ps`` shows it."""
    in_flight: int
    loading: bool
    keep_alive: float = field(default=300.0)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)
