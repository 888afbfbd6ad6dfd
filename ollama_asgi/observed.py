"""What the status page and the metrics read of a running gateway: its parts, and a snapshot of them.

The gateway depends on its telemetry, so its telemetry must not depend on the gateway: it is given
``GatewayParts``, the few attributes it reads (which ``OllamaGateway`` has), and ``snapshot`` reads
them into plain values once per scrape or page refresh. What it knows of each backend comes from the
registry's views (``BackendView``). Nothing here runs per request.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ollama_asgi.admission import Admission
from ollama_asgi.backend import Backend, BackendView
from ollama_asgi.health import BackendState, BackendWatch
from ollama_asgi.inference import ModelLifecycle
from ollama_asgi.registry import BackendRegistry
from ollama_asgi.settings import Settings
from ollama_asgi.upstream import Upstream
from ollama_asgi.vram import DeviceMemory

__all__ = [
    "BackendSnapshot",
    "GatewayParts",
    "LifecycleSnapshot",
    "QueueSnapshot",
    "SharedHealth",
    "Snapshot",
    "snapshot",
]


class SharedHealth(Protocol):
    """The shared state's health (``RedisState``), as far as telemetry reads it."""

    @property
    def healthy(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...


class GatewayParts(Protocol):
    """The parts of a gateway its telemetry reads; ``OllamaGateway`` is one."""

    @property
    def settings(self) -> Settings: ...

    @property
    def backends(self) -> list[Upstream]: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def registry(self) -> BackendRegistry: ...

    @property
    def lifecycle(self) -> ModelLifecycle | None: ...

    @property
    def shared_state(self) -> SharedHealth | None: ...


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """One pool: the slots of a backend's runner of one model for one kind of work (``generate``,
    or ``embed`` where embeddings have slots of their own), and the queue in front of them."""

    backend: str
    model: str  # "" for a pool of requests that name no model
    pool: str
    waiting: int
    in_flight: int
    capacity: int
    service_time: float  # smoothed seconds a request holds a slot
    refill_gaps: tuple[float, ...]  # seconds from a slot's release to its next grant, oldest first


@dataclass(frozen=True, slots=True)
class BackendSnapshot:
    """Where placement stands with one backend, and what its last check or request found."""

    name: str
    available: bool  # new requests go there: breaker closed and not draining
    breaker: str
    draining: bool
    breaker_opens: int
    health: BackendState | None  # None until checked or used


@dataclass(frozen=True, slots=True)
class LifecycleSnapshot:
    """The model lifecycle's counters and what is loaded where."""

    loads: int
    load_failures: int
    coalesced: int
    loading: int
    evictions: int
    refusals: int
    reloads_avoided: int
    context_choices: dict[str, int]
    context_sizes: dict[int, int]
    prewarm: dict[str, tuple[int, int, int]]  # backend -> (pre-warm loads, hits, cold requests)
    vram: dict[str, dict[str, int]]  # backend -> model -> bytes of GPU memory
    fragmentation: dict[str, float]
    gpus: list[DeviceMemory]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A gateway's live state at one moment, as the metrics and the status page report it."""

    max_queue: int
    queues: list[QueueSnapshot]
    backends: list[BackendSnapshot]
    redis_up: bool | None  # None without Redis
    redis_error: str | None
    lifecycle: LifecycleSnapshot | None
    taken_at: float = field(default_factory=time.time)


def snapshot(parts: GatewayParts, health: BackendWatch) -> Snapshot:
    """Read ``parts`` now; safe from another thread (the metrics port's), since it only reads."""
    admission = parts.admission
    views = parts.registry.views()
    queues = _queues(list(parts.registry.backends))
    states = {state.name: state for state in health.current()}
    backends = [
        BackendSnapshot(v.name, v.available, v.breaker, v.draining, v.breaker_opens, states.get(v.name)) for v in views
    ]
    shared = parts.shared_state
    lifecycle = parts.lifecycle
    return Snapshot(
        max_queue=admission.max_queue,
        queues=queues,
        backends=backends,
        redis_up=None if shared is None else shared.healthy,
        redis_error=None if shared is None or shared.healthy else shared.last_error,
        lifecycle=None if lifecycle is None else _lifecycle(lifecycle, views),
    )


def _queues(backends: Iterable[Backend]) -> list[QueueSnapshot]:
    """One entry per pool (a backend's runner of one model, for one kind of work); a backend that
    has seen no request yet reads as empty, with its configured slots."""
    queues = []
    for backend in backends:
        slots = backend.slots
        pools = list(slots.pools.values())
        for pool in pools:
            key = pool.key
            queues.append(
                QueueSnapshot(
                    slots.name,
                    key.model,
                    key.kind,
                    waiting=pool.waiting,
                    in_flight=pool.in_flight,
                    capacity=pool.capacity,
                    service_time=pool.service_time(),
                    refill_gaps=tuple(pool.refill_gaps),
                )
            )
        if not pools:
            queues.append(QueueSnapshot(slots.name, "", "generate", 0, 0, slots.parallel, 0.0, ()))
    queues.sort(key=lambda queue: (queue.backend, queue.pool, queue.model))
    return queues


def _lifecycle(lifecycle: ModelLifecycle, views: list[BackendView]) -> LifecycleSnapshot:
    loader, guard = lifecycle.loader, lifecycle.guard
    fragmentation = {}
    for backend in sorted(lifecycle.backends, key=lambda b: b.name):
        score = guard.fragmentation(backend.models)
        if score is not None:
            fragmentation[backend.name] = score
    views = sorted(views, key=lambda view: view.name)
    return LifecycleSnapshot(
        loads=loader.loads,
        load_failures=loader.failures,
        coalesced=loader.coalesced,
        loading=len(loader.loading),
        evictions=guard.evictions,
        refusals=guard.refusals,
        reloads_avoided=lifecycle.reloads_avoided,
        context_choices=dict(sorted(lifecycle.context_choices.items())),
        context_sizes=dict(sorted(lifecycle.context_sizes.items())),
        prewarm={view.name: view.prewarm for view in views},
        vram={view.name: view.vram for view in views},
        fragmentation=fragmentation,
        gpus=guard.readings(),
    )
