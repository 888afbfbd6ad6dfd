"""Prometheus metrics: request metrics on prometheus-client's own types, live state read at scrape time.

Request metrics (counts, latencies, tokens, rejections) are ``Counter`` and ``Histogram`` objects,
observed once per request from its record after the answer is complete, never per streamed chunk;
each labelled child is looked up in prometheus-client once and kept. The four counters every request
adds to are kept as running totals per (route, model, status) and added to their ``Counter`` when
the metrics are read (see ``_Series``), which keeps a request's cost what it was before these were
prometheus-client objects. Values that already live in the gateway (queue depth, slots, backend and Redis health, lifecycle and pre-warm counters) are read
by one collector from a ``Snapshot`` when Prometheus scrapes (:mod:`ollama_asgi.live_metrics`), so
keeping them costs nothing between scrapes.

Each gateway has a registry of its own by default, so several gateways in one process (or one test
run) never clash. ``Settings.metrics_registry = "global"`` registers into prometheus-client's
default registry instead, where a host's own ``/metrics`` finds them; with
``PROMETHEUS_MULTIPROC_DIR`` set (prometheus-client's multiprocess mode, for several workers) the
request metrics of all workers are aggregated from that directory.

To add a metric: a request metric is a ``Counter`` or ``Histogram`` declared in
``GatewayMetrics.__init__`` and updated in ``observe``; a live value is a family that
:mod:`ollama_asgi.live_metrics` builds from a field of the snapshot.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ollama_asgi.errors import ConfigError
from ollama_asgi.health import BackendWatch
from ollama_asgi.live_metrics import PREFIX, LiveState
from ollama_asgi.model_names import canonical_model
from ollama_asgi.observed import GatewayParts, snapshot
from ollama_asgi.record import RequestRecord
from ollama_asgi.usage import Usage

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["LATENCY_BUCKETS", "WAIT_BUCKETS", "GatewayMetrics", "multiprocess_dir"]

# LLM answers take from milliseconds (embeddings) to minutes (a cold load, then a long generation).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_STREAMED_ROUTES = frozenset({"generate", "chat", "openai_chat", "openai_completions"})

Labels = tuple[str, ...]


def multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess directory, when the process runs in that mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112


def _child(children: dict[Labels, Counter], counter: Counter, labels: Labels) -> Counter:
    child = children.get(labels)
    if child is None:
        child = children[labels] = counter.labels(*labels)
    return child


class _Series:
    """The finished requests of one (route, model, status): what each adds to the metrics.

    Its counters (requests, response bytes, prompt and completion tokens) are running totals that
    only the event loop's thread adds to, brought into prometheus-client's ``Counter`` objects when
    they are read (``GatewayMetrics.bring_up_to_date``): a ``Counter.inc`` is several calls and a
    lock, an addition here is one. Its histograms are prometheus-client's children, observed at once.
    """

    __slots__ = ("applied", "children", "counters", "duration", "first_token", "totals")

    def __init__(self, duration: Histogram, counters: tuple[tuple[Counter, Labels], ...]) -> None:
        self.duration = duration
        self.first_token: Histogram | None = None  # made at the first streamed answer of the series
        self.totals = [0.0] * len(counters)  # requests, response bytes, prompt tokens, completion tokens
        self.applied = [0.0] * len(counters)  # how much of ``totals`` the Counters hold
        self.counters = counters  # the Counter and the labels each total goes to
        self.children: list[Counter | None] = [None] * len(counters)  # made once there is something to add

    def apply(self) -> None:
        totals, applied = self.totals, self.applied
        for i, total in enumerate(totals):
            if total != applied[i]:
                child = self.children[i]
                if child is None:
                    counter, labels = self.counters[i]
                    child = self.children[i] = counter.labels(*labels)
                child.inc(total - applied[i])
                applied[i] = total


class _Exposed(Collector):
    """What ``/_gateway/metrics`` and the metrics port serve: optionally refreshes state first.

    Our counters' and histograms' ``_created`` samples are left out: the exposition is the one
    the dashboard and alerts were written for, and a scrape carries no series nobody reads.
    """

    def __init__(self, collectors: Sequence[Collector], before: Callable[[], None] | None = None) -> None:
        self.collectors = collectors
        self.before = before

    def collect(self) -> Iterable[Metric]:
        if self.before is not None:
            self.before()
        for collector in self.collectors:
            for family in collector.collect():
                if family.name.startswith(PREFIX) and family.type in ("counter", "histogram"):
                    family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family


class GatewayMetrics:
    """The gateway's metrics: declared here, observed in ``observe``, served by ``render``."""

    def __init__(
        self,
        parts: GatewayParts,
        health: BackendWatch,
        started_at: float,
        loop: Callable[[], asyncio.AbstractEventLoop | None] = lambda: None,
    ) -> None:
        settings = parts.settings
        self.registry = REGISTRY if settings.metrics_registry == "global" else CollectorRegistry()
        self._registered: list[Collector] = []
        self._server: WSGIServer | None = None
        self.live = LiveState(lambda: snapshot(parts, health), started_at, self.bring_up_to_date)
        self._register(self.live)

        self.requests = self._counter(
            "requests_total", "Requests answered, by route, model and HTTP status.", ("route", "model", "status")
        )
        self.duration = self._histogram(
            "request_duration_seconds",
            "Time from a request's arrival to the last byte of its answer.",
            ("route", "model"),
            LATENCY_BUCKETS,
        )
        self.first_token = self._histogram(
            "time_to_first_token_seconds",
            "Time from a streamed generation's arrival (queueing and loading included) to its first token.",
            ("route", "model"),
            LATENCY_BUCKETS,
        )
        self.queue_wait = self._histogram(
            "queue_wait_seconds", "Time an admitted request waited for a backend slot.", ("backend",), WAIT_BUCKETS
        )
        self.prompt_tokens = self._counter(
            "prompt_tokens_total", "Prompt tokens Ollama evaluated, from its final chunk.", ("model",)
        )
        self.completion_tokens = self._counter(
            "completion_tokens_total", "Tokens Ollama generated, from its final chunk.", ("model",)
        )
        self.response_bytes = self._counter("response_bytes_total", "Response body bytes sent to clients.", ("route",))
        self.failed_answers = self._counter(
            "failed_answers_total",
            "Answers that failed after their status (200) went out: a stream ended by an error, by route, "
            "model and reason (stream_broken, stream_error, client_stalled).",
            ("route", "model", "reason"),
        )
        self.rejections = self._counter(
            "rejections_total",
            "Requests the gateway answered itself instead of Ollama, by route and reason.",
            ("route", "reason"),
        )
        self._series: dict[Labels, _Series] = {}
        self._queue_waits: dict[str, Histogram] = {}  # by backend
        self._failed: dict[Labels, Counter] = {}
        self._rejected: dict[Labels, Counter] = {}
        self._applying = threading.Lock()  # the metrics port's thread and the event loop may both read
        # With several workers the Counters are files the scraped worker reads: keep them current.
        self._immediate = bool(multiprocess_dir())

        lifecycle = parts.lifecycle
        if lifecycle is not None:
            self.load_duration = self._histogram(
                "model_load_duration_seconds",
                "Time the gateway's own model loads took, from the load request to Ollama's answer.",
                ("backend", "model"),
                LATENCY_BUCKETS,
            )
            lifecycle.loader.on_loaded = lambda backend, model, seconds: self.load_duration.labels(
                backend, model
            ).observe(seconds)

        multiproc = multiprocess_dir()
        if multiproc:
            # Request metrics of every worker come from the directory; live state from this worker.
            self.exposed = _Exposed([MultiProcessCollector(None, multiproc), self.live])  # type: ignore[no-untyped-call]
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

    def _counter(self, name: str, documentation: str, labels: Sequence[str]) -> Counter:
        metric = Counter(PREFIX + name, documentation, labels, registry=None)
        self._register(metric)
        return metric

    def _histogram(self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]) -> Histogram:
        metric = Histogram(PREFIX + name, documentation, labels, registry=None, buckets=buckets)
        self._register(metric)
        return metric

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
        status_text = _STATUS_TEXT.get(status) or str(status)
        series = self._series.get((route, model, status_text))
        if series is None:
            series = self._new_series(route, model, status_text)
        series.duration.observe(now - record.started)
        totals = series.totals
        totals[0] += 1
        if reason:
            if result is not None and record.error is None:  # a reason with a result: it failed mid-answer
                _child(self._failed, self.failed_answers, (route, model, reason)).inc()
            else:
                _child(self._rejected, self.rejections, (route, reason)).inc()
        if record.queued is not None:
            wait = self._queue_waits.get(record.backend)
            if wait is None:
                wait = self._queue_waits[record.backend] = self.queue_wait.labels(record.backend)
            wait.observe(record.queued)
        if result is not None:
            totals[1] += result.sent
            prompt, completion = usage
            totals[2] += prompt
            totals[3] += completion
            streamed = parsed is not None and parsed.stream and route in _STREAMED_ROUTES
            if streamed and record.first_byte is not None and status == 200:
                if series.first_token is None:
                    series.first_token = self.first_token.labels(route, model)
                series.first_token.observe(record.first_byte - record.started)
        if self._immediate:
            series.apply()

    def _new_series(self, route: str, model: str, status: str) -> _Series:
        counters = (
            (self.requests, (route, model, status)),
            (self.response_bytes, (route,)),
            (self.prompt_tokens, (model,)),
            (self.completion_tokens, (model,)),
        )
        series = self._series[(route, model, status)] = _Series(self.duration.labels(route, model), counters)
        return series

    def bring_up_to_date(self) -> None:
        """Add to the Counters what the requests added to their series since they were last read."""
        with self._applying:
            for series in list(self._series.values()):
                series.apply()

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
