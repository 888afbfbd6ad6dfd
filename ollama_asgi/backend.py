"""One Ollama server as the gateway knows it: the unit that backend state belongs to.

A ``Backend`` owns everything kept about one server: its configuration (``BackendSpec``), its HTTP
client, its health and circuit breaker, its slots (``BackendSlots``: a pool and fair queue per
model's runner, and its model turns), its model catalog, where its free memory is known from
(``BackendMemory``, whose domain and load lock it shares with the backends on the same GPUs of this
host), and the traffic model that pre-warms its next model. It is created when the backend is
configured or added and dropped when it is removed, so nothing of a removed backend lingers.
``BackendView`` is what a backend looks like from outside, at one moment.
"""

from __future__ import annotations

import time
from dataclasses import InitVar, dataclass, field
from typing import Literal

from ollama_asgi.catalog import BackendModels
from ollama_asgi.settings import Settings
from ollama_asgi.slots import BackendSlots
from ollama_asgi.specs import BackendSpec
from ollama_asgi.traffic import TrafficModel
from ollama_asgi.upstream import Upstream
from ollama_asgi.vram import BackendMemory

__all__ = ["Backend", "BackendView", "BreakerState"]

BreakerState = Literal["closed", "open", "half-open"]


@dataclass(slots=True, eq=False)
class Backend:
    """One upstream with its health, breaker, slots, model catalog, memory and traffic.

    ``parallel`` (each model's runner's slots; the spec's, else 1) and ``backend_parallel`` (their
    cap together) size its ``slots``.
    """

    spec: BackendSpec
    upstream: Upstream
    traffic: TrafficModel = field(default_factory=TrafficModel)  # its principals' model sequences
    budget: int | None = None  # memory its models may use: its own ``vram_budget``, else the gateway's
    slots: BackendSlots = field(init=False)  # its pools, their fair queues and its model turns
    models: BackendModels = field(init=False)  # what is known of its models: facts, loaded, in flight
    memory: BackendMemory = field(init=False)  # its free memory: its budget, or GPU readings (``use_memory``)
    num_ctx: dict[str, int] = field(default_factory=dict)  # model -> context last chosen here, for pre-warms
    breaker: BreakerState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    cooldown: float = 0.0
    draining: bool = False
    last_error: str | None = None
    last_ok: float = 0.0
    opens: int = 0  # times the breaker opened, for metrics
    parallel: InitVar[int | None] = None
    backend_parallel: InitVar[int | None] = None

    def __post_init__(self, parallel: int | None, backend_parallel: int | None) -> None:
        self.slots = BackendSlots(self.spec.name, parallel or self.spec.parallel or 1, backend_parallel)
        self.models = BackendModels(self.upstream)
        self.memory = BackendMemory(self.models, self.budget)

    @classmethod
    def from_spec(cls, spec: BackendSpec, settings: Settings) -> Backend:
        upstream = Upstream(
            spec.url, connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout, name=spec.name
        )
        traffic = TrafficModel(threshold=settings.prewarm_threshold)
        return cls(
            spec,
            upstream,
            traffic,
            spec.vram_budget or settings.vram_budget,
            parallel=spec.parallel or settings.parallel,
            backend_parallel=settings.backend_parallel,
        )

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def up(self) -> bool | None:
        """The last probe or request reached it (None: neither has happened yet)."""
        if self.failures:
            return False
        return True if self.last_ok else None

    def available(self, now: float) -> bool:
        """May take new requests: in service and its breaker closed (probes decide when it reopens)."""
        return not self.draining and self.breaker == "closed"

    def view(self, now: float | None = None) -> BackendView:
        spec, traffic = self.spec, self.traffic
        return BackendView(
            name=spec.name,
            url=spec.url,
            up=self.up,
            available=self.available(time.monotonic() if now is None else now),
            breaker=self.breaker,
            draining=self.draining,
            failures=self.failures,
            breaker_opens=self.opens,
            last_error=self.last_error,
            weight=spec.weight,
            parallel=spec.parallel,
            vram_budget=spec.vram_budget,
            labels=dict(spec.labels),
            prewarm=(traffic.issued, traffic.hits, traffic.misses),
            vram={model.name: model.size_vram for model in list(self.models.loaded.values())},
        )

    async def aclose(self) -> None:
        await self.upstream.aclose()


@dataclass(frozen=True, slots=True)
class BackendView:
    """One backend at one moment: what health, status, metrics and the backends endpoint report."""

    name: str
    url: str
    up: bool | None  # None until probed or used
    available: bool  # new requests go there: breaker closed and not draining
    breaker: BreakerState
    draining: bool
    failures: int
    breaker_opens: int
    last_error: str | None
    weight: float
    parallel: int | None
    vram_budget: int | None
    labels: dict[str, str]
    prewarm: tuple[int, int, int]  # its traffic model's pre-warm loads, pre-warm hits and cold requests
    vram: dict[str, int]  # loaded model -> bytes of GPU memory, as Ollama's /api/ps last said

    def listed(self) -> dict[str, object]:
        """As ``GET /_gateway/backends`` lists it (no URL: that is for the configuration to say)."""
        return {
            "name": self.name,
            "breaker": self.breaker,
            "draining": self.draining,
            "failures": self.failures,
            "last_error": self.last_error,
            "weight": self.weight,
            "labels": self.labels,
        }

    def document(self) -> dict[str, object]:
        """As other workers read it from the shared backend list: enough to add it there."""
        return {
            "url": self.url,
            "name": self.name,
            "weight": self.weight,
            "parallel": self.parallel,
            "vram_budget": self.vram_budget,
            "labels": self.labels,
            "draining": self.draining,
        }
