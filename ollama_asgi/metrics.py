"""Prometheus metrics, observed once per request and read from live state at scrape time.

Request metrics (counts, latencies, tokens, rejections) are observed from the request's record
after the answer is complete, never per streamed chunk. Values that already live in the gateway
(queue depth, slots, backend and Redis health) are read when Prometheus scrapes, so keeping them
costs nothing between scrapes.

Each gateway has a registry of its own by default, so several gateways in one process (or one test
run) never clash. ``Settings.metrics_registry = "global"`` registers into prometheus-client's
default registry instead, where a host's own ``/metrics`` finds them; with
``PROMETHEUS_MULTIPROC_DIR`` set (prometheus-client's multiprocess mode, for several workers) the
request metrics of all workers are aggregated from that directory.

To add a metric: declare it with ``counter``/``gauge``/``histogram`` (the ``ollama_asgi_`` prefix
and the gateway's registry are applied) and update it where the event happens, or register a
function with ``on_scrape`` that yields metric families from state kept elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ollama_asgi._version import __version__
from ollama_asgi.protocol import canonical_model
from ollama_asgi.settings import ConfigError
from ollama_asgi.usage import Usage

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ollama_asgi.gateway import OllamaGateway
    from ollama_asgi.status import BackendWatch
    from ollama_asgi.telemetry import RequestRecord

__all__ = ["PREFIX", "GatewayMetrics"]

PREFIX = "ollama_asgi_"

# LLM answers take from milliseconds (embeddings) to minutes (a cold load, then a long generation).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_STREAMED_ROUTES = frozenset({"generate", "chat", "openai_chat", "openai_completions"})


def multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess directory, when the process runs in that mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112


class _OnScrape(Collector):
    """Yields the families of every registered scrape-time source."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[Metric]]] = []

    def collect(self) -> Iterable[Metric]:
        for source in self.sources:
            yield from source()

    def describe(self) -> Iterable[Metric]:
        return ()  # names are only known at scrape time; do not collect on registration


class _Exposed(Collector):
    """What ``/_gateway/metrics`` and the metrics port serve: optionally refreshes state first."""

    def __init__(self, collectors: Sequence[Collector], before: Callable[[], None] | None = None) -> None:
        self.collectors = collectors
        self.before = before

    def collect(self) -> Iterable[Metric]:
        if self.before is not None:
            self.before()
        for collector in self.collectors:
            yield from collector.collect()


class GatewayMetrics:
    """The gateway's metrics: declared here, observed in ``observe``, served by ``render``."""

    def __init__(
        self,
        gateway: OllamaGateway,
        health: BackendWatch,
        started_at: float,
        loop: Callable[[], asyncio.AbstractEventLoop | None] = lambda: None,
    ) -> None:
        settings = gateway.settings
        self.registry = REGISTRY if settings.metrics_registry == "global" else CollectorRegistry()
        self._registered: list[Collector] = []
        self._scrape = _OnScrape()
        self._register(self._scrape)
        self._server: WSGIServer | None = None
        # Request metrics are observed on every request: plain numbers by default (see _Tally),
        # prometheus-client's objects where several workers must add up through its directory.
        self._sink: _Sink = _Children() if multiprocess_dir() else _Tally()

        self.requests = self.request_counter(
            "requests_total", "Requests answered, by route, model and HTTP status.", ("route", "model", "status")
        )
        self.duration = self.request_histogram(
            "request_duration_seconds",
            "Time from a request's arrival to the last byte of its answer.",
            ("route", "model"),
            LATENCY_BUCKETS,
        )
        self.first_token = self.request_histogram(
            "time_to_first_token_seconds",
            "Time from a streamed generation's arrival (queueing and loading included) to its first token.",
            ("route", "model"),
            LATENCY_BUCKETS,
        )
        self.queue_wait = self.request_histogram(
            "queue_wait_seconds", "Time an admitted request waited for a backend slot.", ("backend",), WAIT_BUCKETS
        )
        self.prompt_tokens = self.request_counter(
            "prompt_tokens_total", "Prompt tokens Ollama evaluated, from its final chunk.", ("model",)
        )
        self.completion_tokens = self.request_counter(
            "completion_tokens_total", "Tokens Ollama generated, from its final chunk.", ("model",)
        )
        self.response_bytes = self.request_counter(
            "response_bytes_total", "Response body bytes sent to clients.", ("route",)
        )
        self.failed_answers = self.request_counter(
            "failed_answers_total",
            "Answers that failed after their status (200) went out: a stream ended by an error, by route, "
            "model and reason (stream_broken, stream_error, client_stalled).",
            ("route", "model", "reason"),
        )
        self.rejections = self.request_counter(
            "rejections_total",
            "Requests the gateway answered itself instead of Ollama, by route and reason.",
            ("route", "reason"),
        )

        self.on_scrape(lambda: _build_info(started_at))
        self.on_scrape(lambda: _admission_families(gateway))
        self.on_scrape(lambda: _backend_families(health))
        self.on_scrape(lambda: _placement_families(gateway))
        if gateway.lifecycle is not None:
            lifecycle = gateway.lifecycle
            self.on_scrape(lambda: _lifecycle_families(gateway))
            self.load_duration = self.request_histogram(
                "model_load_duration_seconds",
                "Time the gateway's own model loads took, from the load request to Ollama's answer.",
                ("backend", "model"),
                LATENCY_BUCKETS,
            )
            lifecycle.loader.on_loaded = lambda backend, model, seconds: self._sink.observe(
                self.load_duration, (backend, model), seconds
            )
        if gateway.shared_state is not None:
            state = gateway.shared_state
            self.on_scrape(
                lambda: [_gauge("redis_up", "1 when the shared Redis answers, else 0.", value=state.healthy)]
            )

        if isinstance(self._sink, _Tally):
            self._register(self._sink)  # once every request metric is declared: registries check names
        multiproc = multiprocess_dir()
        if multiproc:
            # Request metrics of every worker come from the directory; live state from this worker.
            self.exposed = _Exposed([MultiProcessCollector(None, multiproc), self._scrape])  # type: ignore[no-untyped-call]
        else:
            self.exposed = _Exposed([self.registry])
        if settings.metrics_port is not None:
            self._serve_port(health, loop, settings.metrics_host, settings.metrics_port)

    # -- declaring metrics ---------------------------------------------------------------------

    def _register(self, collector: Collector) -> None:
        try:
            self.registry.register(collector)
        except ValueError as exc:
            self.close()  # a gateway that failed to start leaves nothing behind in a shared registry
            raise ConfigError(
                "metrics_registry",
                f"{exc}; only one gateway per process can use the global registry",
            ) from exc
        self._registered.append(collector)

    def request_counter(self, name: str, documentation: str, labels: Sequence[str]) -> _RequestMetric:
        """A counter updated per request (through the sink, see ``_Tally``)."""
        return self._sink.declare(_RequestMetric(PREFIX + name, documentation, tuple(labels), None), self)

    def request_histogram(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> _RequestMetric:
        """A histogram observed per request (through the sink, see ``_Tally``)."""
        return self._sink.declare(_RequestMetric(PREFIX + name, documentation, tuple(labels), tuple(buckets)), self)

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        metric = Counter(PREFIX + name, documentation, labels, registry=None)
        self._register(metric)
        return metric

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        """A gauge set where its value changes; across multiprocess workers the live values are summed."""
        metric = Gauge(PREFIX + name, documentation, labels, registry=None, multiprocess_mode="livesum")
        self._register(metric)
        return metric

    def histogram(
        self, name: str, documentation: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        metric = Histogram(PREFIX + name, documentation, labels, registry=None, buckets=buckets)
        self._register(metric)
        return metric

    def on_scrape(self, source: Callable[[], Iterable[Metric]]) -> None:
        """Read ``source`` at every scrape, for values that already live somewhere in the gateway."""
        self._scrape.sources.append(source)

    # -- observing and serving -----------------------------------------------------------------

    def observe(self, record: RequestRecord, status: int, reason: str, now: float, usage: Usage) -> None:
        """Everything one finished request contributes; called once, after its last byte.

        ``usage`` is the request's token counts, read once from its final chunk by the caller.
        """
        route = record.route.name if record.route is not None else "unmatched"
        result = record.result
        parsed = record.parsed
        # Model names come from clients: label only those Ollama accepted, so a flood of made-up
        # names cannot grow the series without bound.
        model = ""
        if parsed is not None and parsed.model and result is not None and status not in (400, 404):
            model = canonical_model(parsed.model)
        sink = self._sink
        sink.inc(self.requests, (route, model, _status_text(status)))
        sink.observe(self.duration, (route, model), now - record.started)
        if reason:
            if result is not None and record.error is None:  # a reason with a result: it failed mid-answer
                sink.inc(self.failed_answers, (route, model, reason))
            else:
                sink.inc(self.rejections, (route, reason))
        if record.queued is not None:
            sink.observe(self.queue_wait, (record.backend,), record.queued)
        if result is None:
            return
        sink.inc(self.response_bytes, (route,), result.sent)
        streamed = parsed is not None and parsed.stream and route in _STREAMED_ROUTES
        if streamed and record.first_byte is not None and status == 200:
            sink.observe(self.first_token, (route, model), record.first_byte - record.started)
        prompt, completion = usage
        if prompt:
            sink.inc(self.prompt_tokens, (model,), prompt)
        if completion:
            sink.inc(self.completion_tokens, (model,), completion)

    def render(self) -> tuple[bytes, bytes]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.exposed), CONTENT_TYPE_PLAIN_0_0_4.encode()

    def _serve_port(
        self, health: BackendWatch, loop: Callable[[], asyncio.AbstractEventLoop | None], host: str, port: int
    ) -> None:
        # prometheus-client serves the port from a thread; backend checks run on the gateway's loop.
        def refresh() -> None:
            running = loop()
            if running is not None and running.is_running():
                try:
                    health.refresh_from_thread(running, timeout=2.0)
                except Exception:  # a scrape must not fail because a backend is slow to answer
                    pass

        exposed = _Exposed(self.exposed.collectors, before=refresh)
        try:
            self._server, _ = start_http_server(port, host, registry=exposed)
        except OSError as exc:
            if multiprocess_dir():
                return  # another worker serves the port, and it sees every worker's metrics
            raise ConfigError("metrics_port", f"cannot listen on {host}:{port}: {exc}") from exc

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.registry is REGISTRY:
            for collector in self._registered:
                REGISTRY.unregister(collector)
        self._registered.clear()


_STATUS_TEXT = {code: str(code) for code in range(100, 600)}


def _status_text(status: int) -> str:
    return _STATUS_TEXT.get(status) or str(status)


class _RequestMetric:
    """A per-request counter (``buckets`` None) or histogram; its values live in the sink that declared it."""

    __slots__ = ("buckets", "documentation", "labels", "name", "store", "values")

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...] | None
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.buckets = buckets
        self.values: dict[tuple[str, ...], Any] = {}  # _Tally: label values -> number or [bucket counts..., sum]
        self.store: Any = None  # _Children: the prometheus-client metric


class _Sink(Protocol):
    def declare(self, metric: _RequestMetric, owner: GatewayMetrics) -> _RequestMetric: ...

    def inc(self, metric: _RequestMetric, labels: tuple[str, ...], amount: float = 1.0) -> None: ...

    def observe(self, metric: _RequestMetric, labels: tuple[str, ...], value: float) -> None: ...


class _Tally(Collector):
    """Request metrics as plain numbers, turned into metric families when Prometheus scrapes.

    prometheus-client's metric objects take a lock and a label lookup on every update; a request
    makes six to eight of them: about 10 of the gateway's 58 µs per request in-process
    (``bench/overhead.py``). Here an update is a dict lookup and an addition, in the event loop's
    thread; a scrape from the metrics port's thread reads copies, so at worst it misses an update
    that lands while it reads.
    """

    def __init__(self) -> None:
        self.metrics: list[_RequestMetric] = []

    def declare(self, metric: _RequestMetric, owner: GatewayMetrics) -> _RequestMetric:
        self.metrics.append(metric)
        return metric

    def inc(self, metric: _RequestMetric, labels: tuple[str, ...], amount: float = 1.0) -> None:
        values = metric.values
        values[labels] = values.get(labels, 0.0) + amount

    def observe(self, metric: _RequestMetric, labels: tuple[str, ...], value: float) -> None:
        buckets = metric.buckets
        assert buckets is not None
        counts = metric.values.get(labels)
        if counts is None:
            counts = metric.values[labels] = [0] * (len(buckets) + 1) + [0.0]
        counts[bisect_left(buckets, value)] += 1  # the first bucket whose bound is >= value
        counts[-1] += value

    def collect(self) -> Iterable[Metric]:
        for metric in self.metrics:
            family = _empty_family(metric)
            values = list(metric.values.items())
            if isinstance(family, CounterMetricFamily):
                for labels, value in values:
                    family.add_metric(labels, value)
            else:
                assert metric.buckets is not None
                bounds = [*map(floatToGoString, metric.buckets), "+Inf"]
                for labels, counts in values:
                    counts = list(counts)
                    cumulative = list(accumulate(counts[:-1]))
                    family.add_metric(labels, list(zip(bounds, cumulative, strict=True)), counts[-1])
            yield family

    def describe(self) -> Iterable[Metric]:
        """The names, so that a registry refuses a second gateway's clashing metrics at registration."""
        return [_empty_family(metric) for metric in self.metrics]


def _empty_family(metric: _RequestMetric) -> CounterMetricFamily | HistogramMetricFamily:
    if metric.buckets is None:
        return CounterMetricFamily(metric.name, metric.documentation, labels=metric.labels)
    return HistogramMetricFamily(metric.name, metric.documentation, labels=metric.labels)


class _Children:
    """Request metrics on prometheus-client's objects: multiprocess mode writes them to its directory."""

    def __init__(self) -> None:
        self._children: dict[tuple[object, ...], Any] = {}

    def declare(self, metric: _RequestMetric, owner: GatewayMetrics) -> _RequestMetric:
        if metric.buckets is None:
            metric.store = owner.counter(metric.name.removeprefix(PREFIX), metric.documentation, metric.labels)
        else:
            metric.store = owner.histogram(
                metric.name.removeprefix(PREFIX), metric.documentation, metric.labels, metric.buckets
            )
        return metric

    def _child(self, metric: _RequestMetric, labels: tuple[str, ...]) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.store.labels(*labels)
        return found

    def inc(self, metric: _RequestMetric, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self._child(metric, labels).inc(amount)

    def observe(self, metric: _RequestMetric, labels: tuple[str, ...], value: float) -> None:
        self._child(metric, labels).observe(value)


def _gauge(name: str, documentation: str, *, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=float(value))


def _build_info(started_at: float) -> Iterable[Metric]:
    info = InfoMetricFamily(PREFIX + "build", "The running ollama-asgi version.", value={"version": __version__})
    return [info, _gauge("start_time_seconds", "When the gateway was created, in Unix time.", value=started_at)]


def _admission_families(gateway: OllamaGateway) -> Iterable[Metric]:
    labels = ["backend", "pool"]
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
    admission = gateway.admission
    seen: set[str] = set()
    for name, pool in list(admission.pools.items()):
        backend_name, _, kind = name.partition("#")
        key = [backend_name, kind or "generate"]
        seen.add(backend_name)
        depth.add_metric(key, pool.waiting)
        in_flight.add_metric(key, pool.in_flight)
        slots.add_metric(key, pool.capacity)
        service.add_metric(key, pool.service_time())
        recent = sorted(pool.refill_gaps)
        if recent:
            for q in (0.5, 0.99, 1.0):
                gaps.add_metric([*key, str(q)], recent[min(len(recent) - 1, int(q * len(recent)))])
    for backend in gateway.backends:
        limit.add_metric([backend.name], admission.max_queue)
        if backend.name not in seen:  # no request yet: nothing queued, nothing in flight
            key = [backend.name, "generate"]
            depth.add_metric(key, 0)
            in_flight.add_metric(key, 0)
            slots.add_metric(key, admission.parallel)
    return [depth, in_flight, slots, service, gaps, limit]


def _backend_families(health: BackendWatch) -> Iterable[Metric]:
    up = GaugeMetricFamily(
        PREFIX + "backend_up", "1 when the backend answered its last check or request, else 0.", labels=["backend"]
    )
    for state in health.current():
        if state.up is not None:
            up.add_metric([state.name], float(state.up))
    return [up]


def _placement_families(gateway: OllamaGateway) -> Iterable[Metric]:
    available = GaugeMetricFamily(
        PREFIX + "backend_available",
        "1 when placement sends new requests to the backend (breaker closed, not draining), else 0.",
        labels=["backend"],
    )
    opens = CounterMetricFamily(
        PREFIX + "backend_breaker_opens", "Times the backend's circuit breaker opened.", labels=["backend"]
    )
    now = time.monotonic()
    for backend in list(gateway.placement.backends):
        available.add_metric([backend.name], float(backend.available(now)))
        opens.add_metric([backend.name], backend.opens)
    return [available, opens]


def _lifecycle_families(gateway: OllamaGateway) -> Iterable[Metric]:
    lifecycle = gateway.lifecycle
    assert lifecycle is not None
    loader, guard = lifecycle.loader, lifecycle.guard
    yield CounterMetricFamily(PREFIX + "model_loads", "Model loads the gateway made.", value=loader.loads)
    yield CounterMetricFamily(PREFIX + "model_load_failures", "Model loads that failed.", value=loader.failures)
    yield CounterMetricFamily(
        PREFIX + "model_load_waiters_coalesced",
        "Requests that waited on a load already under way instead of starting their own.",
        value=loader.coalesced,
    )
    yield _gauge("models_loading", "Model loads in progress now.", value=len(loader.loading))
    yield CounterMetricFamily(
        PREFIX + "model_evictions", "Idle models the VRAM guard unloaded to make room.", value=guard.evictions
    )
    yield CounterMetricFamily(
        PREFIX + "model_load_refusals",
        "Loads refused because only busy models could have made room.",
        value=guard.refusals,
    )
    choices = CounterMetricFamily(
        PREFIX + "num_ctx_choices", "How each request's num_ctx was chosen.", labels=["reason"]
    )
    for reason, count in sorted(lifecycle.context_choices.items()):
        choices.add_metric([reason], count)
    yield choices
    sizes = CounterMetricFamily(
        PREFIX + "num_ctx_requests", "Requests by the num_ctx sent to Ollama.", labels=["num_ctx"]
    )
    for size, count in sorted(lifecycle.context_sizes.items()):
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
    for name, traffic in sorted(lifecycle.traffic.items()):
        issued.add_metric([name], traffic.issued)
        hits.add_metric([name], traffic.hits)
        cold.add_metric([name], traffic.misses)
    yield from (issued, hits, cold)
    loaded = GaugeMetricFamily(
        PREFIX + "model_vram_bytes",
        "GPU memory of each loaded model, from Ollama's /api/ps.",
        labels=["backend", "model"],
    )
    fragmentation = GaugeMetricFamily(
        PREFIX + "vram_fragmentation_ratio",
        "GPU memory used by nothing the loaded models account for (CUDA contexts excluded), over total.",
        labels=["backend"],
    )
    for name, models in sorted(lifecycle.models.items()):
        for model in list(models.loaded.values()):
            loaded.add_metric([name, model.name], model.size_vram)
        score = guard.fragmentation(models)
        if score is not None:
            fragmentation.add_metric([name], score)
    yield from (loaded, fragmentation)
    readings = guard.readings()
    if readings:
        for kind, doc in (("total", "Total"), ("used", "Used"), ("free", "Free")):
            family = GaugeMetricFamily(
                PREFIX + f"gpu_memory_{kind}_bytes", f"{doc} GPU memory per device, from NVML.", labels=["device"]
            )
            for device in readings:
                family.add_metric([str(device.index)], getattr(device, kind))
            yield family
