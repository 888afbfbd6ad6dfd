"""The gateway's live state as Prometheus metric families, built from one snapshot per scrape.

Queue depth, slots, backend health, Redis, the lifecycle's and pre-warming's counters and GPU memory
already live in the gateway; this collector reads them (``observed.snapshot``) only when Prometheus
scrapes, so keeping them costs nothing between scrapes. The request metrics, observed once per
request, are :mod:`ollama_asgi.metrics`'. To add a live value: a family built below from a field of
the snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from ollama_asgi._version import __version__
from ollama_asgi.observed import Snapshot

__all__ = ["PREFIX", "LiveState"]

PREFIX = "ollama_asgi_"


class LiveState(Collector):
    """The gateway's live state as metric families, read from one snapshot per scrape."""

    def __init__(self, read: Callable[[], Snapshot], started_at: float, before: Callable[[], None]) -> None:
        self.read = read
        self.started_at = started_at
        self.before = before

    def collect(self) -> Iterable[Metric]:
        # Registered before the request metrics, so their Counters are current when the registry reads them.
        self.before()
        return _live_families(self.read(), self.started_at)

    def describe(self) -> Iterable[Metric]:
        return ()  # labels are only known at scrape time; do not read the gateway on registration


def _gauge(name: str, documentation: str, *, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=float(value))


def _live_families(now: Snapshot, started_at: float) -> Iterable[Metric]:
    yield InfoMetricFamily(PREFIX + "build", "The running ollama-asgi version.", value={"version": __version__})
    yield _gauge("start_time_seconds", "When the gateway was created, in Unix time.", value=started_at)
    yield from _admission_families(now)
    yield from _backend_families(now)
    if now.lifecycle is not None:
        yield from _lifecycle_families(now)
    if now.redis_up is not None:
        yield _gauge("redis_up", "1 when the shared Redis answers, else 0.", value=now.redis_up)


def _admission_families(now: Snapshot) -> Iterable[Metric]:
    labels = ["backend", "pool", "model"]
    depth = GaugeMetricFamily(PREFIX + "queue_depth", "Requests waiting for a backend slot.", labels=labels)
    in_flight = GaugeMetricFamily(PREFIX + "requests_in_flight", "Requests holding a backend slot.", labels=labels)
    slots = GaugeMetricFamily(PREFIX + "slots", "Backend slots: requests Ollama is given at once.", labels=labels)
    service = GaugeMetricFamily(
        PREFIX + "service_time_seconds", "Smoothed time a request holds a slot (basis of Retry-After).", labels=labels
    )
    gaps = GaugeMetricFamily(
        PREFIX + "slot_refill_gap_seconds",
        "Time from a slot's release to its next grant, over the last refills (quantile 0.5, 0.99, 1).",
        labels=[*labels, "quantile"],
    )
    limit = GaugeMetricFamily(
        PREFIX + "queue_limit", "Requests that may wait per backend before 503 (max_queue).", labels=["backend"]
    )
    for queue in now.queues:
        key = [queue.backend, queue.pool, queue.model]
        depth.add_metric(key, queue.waiting)
        in_flight.add_metric(key, queue.in_flight)
        slots.add_metric(key, queue.capacity)
        service.add_metric(key, queue.service_time)
        recent = sorted(queue.refill_gaps)
        if recent:
            for q in (0.5, 0.99, 1.0):
                gaps.add_metric([*key, str(q)], recent[min(len(recent) - 1, int(q * len(recent)))])
    for backend in dict.fromkeys(queue.backend for queue in now.queues):
        limit.add_metric([backend], now.max_queue)
    return [depth, in_flight, slots, service, gaps, limit]


def _backend_families(now: Snapshot) -> Iterable[Metric]:
    up = GaugeMetricFamily(
        PREFIX + "backend_up", "1 when the backend answered its last check or request, else 0.", labels=["backend"]
    )
    available = GaugeMetricFamily(
        PREFIX + "backend_available",
        "1 when placement sends new requests to the backend (breaker closed, not draining), else 0.",
        labels=["backend"],
    )
    opens = CounterMetricFamily(
        PREFIX + "backend_breaker_opens", "Times the backend's circuit breaker opened.", labels=["backend"]
    )
    for backend in now.backends:
        if backend.health is not None and backend.health.up is not None:
            up.add_metric([backend.name], float(backend.health.up))
        available.add_metric([backend.name], float(backend.available))
        opens.add_metric([backend.name], backend.breaker_opens)
    return [up, available, opens]


def _lifecycle_families(now: Snapshot) -> Iterable[Metric]:
    lifecycle = now.lifecycle
    assert lifecycle is not None
    yield CounterMetricFamily(PREFIX + "model_loads", "Model loads the gateway made.", value=lifecycle.loads)
    yield CounterMetricFamily(PREFIX + "model_load_failures", "Model loads that failed.", value=lifecycle.load_failures)
    yield CounterMetricFamily(
        PREFIX + "model_load_waiters_coalesced",
        "Requests that waited on a load already under way instead of starting their own.",
        value=lifecycle.coalesced,
    )
    yield _gauge("models_loading", "Model loads in progress now.", value=lifecycle.loading)
    yield CounterMetricFamily(
        PREFIX + "model_evictions", "Idle models the VRAM guard unloaded to make room.", value=lifecycle.evictions
    )
    yield CounterMetricFamily(
        PREFIX + "model_load_refusals",
        "Loads refused because only busy models could have made room.",
        value=lifecycle.refusals,
    )
    choices = CounterMetricFamily(
        PREFIX + "num_ctx_choices", "How each request's num_ctx was chosen.", labels=["reason"]
    )
    for reason, count in lifecycle.context_choices.items():
        choices.add_metric([reason], count)
    yield choices
    sizes = CounterMetricFamily(
        PREFIX + "num_ctx_requests", "Requests by the num_ctx sent to Ollama.", labels=["num_ctx"]
    )
    for size, count in lifecycle.context_sizes.items():
        sizes.add_metric([str(size)], count)
    yield sizes
    yield CounterMetricFamily(
        PREFIX + "num_ctx_reloads_avoided",
        "Requests that used the loaded runner's larger context instead of forcing a reload to a smaller bucket.",
        value=lifecycle.reloads_avoided,
    )
    issued = CounterMetricFamily(PREFIX + "prewarm_loads", "Pre-warm loads started.", labels=["backend"])
    hits = CounterMetricFamily(
        PREFIX + "prewarm_hits", "Requests that found their model loaded thanks to pre-warming.", labels=["backend"]
    )
    cold = CounterMetricFamily(
        PREFIX + "cold_requests", "Requests that found their model neither loaded nor loading.", labels=["backend"]
    )
    for name, (started, found, missed) in lifecycle.prewarm.items():
        issued.add_metric([name], started)
        hits.add_metric([name], found)
        cold.add_metric([name], missed)
    yield from (issued, hits, cold)
    loaded = GaugeMetricFamily(
        PREFIX + "model_vram_bytes",
        "GPU memory of each loaded model, from Ollama's /api/ps.",
        labels=["backend", "model"],
    )
    for name, models in lifecycle.vram.items():
        for model, size in models.items():
            loaded.add_metric([name, model], size)
    fragmentation = GaugeMetricFamily(
        PREFIX + "vram_fragmentation_ratio",
        "GPU memory used by nothing the loaded models account for (CUDA contexts excluded), over total.",
        labels=["backend"],
    )
    for name, score in lifecycle.fragmentation.items():
        fragmentation.add_metric([name], score)
    yield from (loaded, fragmentation)
    if lifecycle.gpus:
        for kind, doc in (("total", "Total"), ("used", "Used"), ("free", "Free")):
            family = GaugeMetricFamily(
                PREFIX + f"gpu_memory_{kind}_bytes", f"{doc} GPU memory per device, from NVML.", labels=["device"]
            )
            for device in lifecycle.gpus:
                family.add_metric([str(device.index)], getattr(device, kind))
            yield family
