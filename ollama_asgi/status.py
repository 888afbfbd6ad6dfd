"""``/_gateway/status``: what the gateway and its backends are doing now, as JSON or a live page.

The JSON is for tools and the page; a browser (``Accept`` preferring ``text/html``) gets a small
self-contained page that polls the JSON every second and draws bars for queues and model memory.
Loaded models come from each backend's ``/api/ps``, fetched with a short timeout and cached for a
second, so a page left open, or many of them, costs Ollama at most one call per second.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from ollama_asgi._version import __version__
from ollama_asgi.types import Scope
from ollama_asgi.upstream import Upstream, UpstreamError

if TYPE_CHECKING:
    from ollama_asgi.gateway import OllamaGateway

__all__ = ["BackendState", "BackendWatch", "StatusPage", "prefers_html"]

_RECENT_GAPS = 20
_MODEL_KEYS = ("name", "size", "size_vram", "expires_at", "context_length")


@dataclass(slots=True)
class BackendState:
    """What is known about one backend: reachability, and the models it has loaded."""

    name: str
    url: str
    up: bool | None = None  # None until checked or used
    checked_at: float = 0.0  # time.monotonic() of the last /api/ps check
    latency: float | None = None  # seconds the last check took
    models: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


class BackendWatch:
    """Checks each backend's ``/api/ps`` on demand, at most once per ``ttl`` however many ask.

    ``backends`` is the gateway's own list, which changes when backends are added or removed at run
    time; states follow it by name. ``changed`` counts the loads and unloads the gateway made: a
    check older than the last of them is stale whatever its age.
    """

    def __init__(
        self,
        backends: list[Upstream],
        *,
        ttl: float = 1.0,
        timeout: float = 1.0,
        changed: Callable[[], int] = lambda: 0,
    ) -> None:
        self.backends = backends
        self.ttl = ttl
        self.timeout = timeout
        self.changed = changed
        self.states: dict[str, BackendState] = {}
        self._refreshed = 0.0
        self._seen = 0  # ``changed()`` when the last check started
        self._task: asyncio.Future[None] | None = None

    def current(self) -> list[BackendState]:
        """What is known of the backends in service now (read-only: safe from another thread)."""
        states = self.states
        return [state for b in list(self.backends) if (state := states.get(b.name)) is not None]

    def _state(self, backend: Upstream) -> BackendState:
        state = self.states.get(backend.name)
        if state is None or state.url != backend.base_url:
            state = self.states[backend.name] = BackendState(backend.name, backend.base_url)
        return state

    def note(self, backend: str, up: bool) -> None:
        """A request just reached (or failed to reach) ``backend``: the freshest health there is."""
        for upstream in self.backends:
            if upstream.name == backend:
                self._state(upstream).up = up

    async def refresh(self) -> list[BackendState]:
        loop = asyncio.get_running_loop()
        task = self._task
        if (
            task is None
            or task.get_loop() is not loop
            or (task.done() and (time.monotonic() - self._refreshed >= self.ttl or self.changed() != self._seen))
        ):
            task = self._task = asyncio.ensure_future(self._check_all())
        await asyncio.shield(task)
        return self.current()

    def refresh_from_thread(self, loop: asyncio.AbstractEventLoop, *, timeout: float) -> None:
        """``refresh`` for code on another thread (the metrics port), run on the gateway's loop."""
        asyncio.run_coroutine_threadsafe(self.refresh(), loop).result(timeout)

    async def _check_all(self) -> None:
        self._seen = self.changed()
        backends = list(self.backends)
        names = {b.name for b in backends}
        self.states = {name: state for name, state in self.states.items() if name in names}
        await asyncio.gather(*(self._check(b, self._state(b)) for b in backends))
        self._refreshed = time.monotonic()

    async def _check(self, backend: Upstream, state: BackendState) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                resp = await backend.open("GET", "/api/ps")
                async with resp:
                    body = await resp.read()
            if resp.status != 200:
                raise UpstreamError("protocol", f"/api/ps answered {resp.status}")
            models = orjson.loads(body).get("models") or []
            state.models = [{k: m.get(k) for k in _MODEL_KEYS} for m in models if isinstance(m, dict)]
            state.up, state.error = True, None
        except (UpstreamError, aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, AttributeError) as exc:
            state.up = False
            state.models = []
            state.error = str(exc) or f"no answer within {self.timeout:g}s"
        state.latency = time.monotonic() - started
        state.checked_at = time.monotonic()


def _accept_q(accept: str, wanted: str) -> float:
    """The quality ``accept`` gives ``wanted`` (``type/subtype``), following ``type/*`` and ``*/*``."""
    best, best_specificity = 0.0, -1
    major = wanted.split("/", 1)[0]
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        specificity = 2 if media == wanted else 1 if media == f"{major}/*" else 0 if media == "*/*" else -1
        if specificity < best_specificity or specificity < 0:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best, best_specificity = q, specificity
    return best


def prefers_html(scope: Scope) -> bool:
    """True when the client ranks ``text/html`` above JSON, as browsers do; a tie goes to JSON."""
    accept = ""
    for name, value in scope["headers"]:
        if name == b"accept":
            accept = bytes(value).decode("latin-1")
            break
    return _accept_q(accept, "text/html") > _accept_q(accept, "application/json")


def _csp_hash(html: str, tag: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    assert match is not None, f"the status page has no <{tag}>"
    return "'sha256-" + base64.b64encode(hashlib.sha256(match.group(1).encode()).digest()).decode() + "'"


class StatusPage:
    """Builds the status report and answers ``/_gateway/status``."""

    def __init__(self, gateway: OllamaGateway, health: BackendWatch, started_at: float) -> None:
        self.gateway = gateway
        self.health = health
        self.started_at = started_at
        self._html: bytes | None = None
        self._html_headers: list[tuple[bytes, bytes]] = []

    async def report(self) -> dict[str, Any]:
        gateway = self.gateway
        backends = await self.health.refresh()
        queues = []
        for name, pool in sorted(gateway.admission.pools.items()):
            backend, _, kind = name.partition("#")
            queues.append(
                {
                    "backend": backend,
                    "pool": kind or "generate",
                    "in_flight": pool.in_flight,
                    "waiting": pool.waiting,
                    "capacity": pool.capacity,
                    "service_time_seconds": round(pool.service_time(), 6),
                    "refill_gaps_seconds": [round(g, 6) for g in list(pool.refill_gaps)[-_RECENT_GAPS:]],
                }
            )
        placed = {b.name: b for b in gateway.placement.backends}
        redis: dict[str, Any] | None = None
        if gateway.shared_state is not None:
            state = gateway.shared_state
            redis = {"up": state.healthy, "error": None if state.healthy else state.last_error}
        return {
            "version": __version__,
            "started_at": datetime.fromtimestamp(self.started_at, UTC).isoformat().replace("+00:00", "Z"),
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "max_queue": gateway.admission.max_queue,
            "backends": [
                {
                    "name": b.name,
                    "url": b.url,
                    "up": b.up,
                    "latency_seconds": None if b.latency is None else round(b.latency, 6),
                    "error": b.error,
                    "breaker": placed[b.name].breaker if b.name in placed else None,
                    "draining": placed[b.name].draining if b.name in placed else False,
                    "models": b.models,
                }
                for b in backends
            ],
            "queues": queues,
            "redis": redis,
            "lifecycle": _lifecycle_report(gateway),
        }

    async def answer(self, scope: Scope) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
        """Body, content type and extra headers: the page for browsers, else the JSON report."""
        headers = [(b"cache-control", b"no-store"), (b"vary", b"accept")]
        if prefers_html(scope):
            return self._page(), b"text/html; charset=utf-8", headers + self._html_headers
        return orjson.dumps(await self.report()), b"application/json; charset=utf-8", headers

    def _page(self) -> bytes:
        if self._html is None:
            html = files("ollama_asgi").joinpath("status.html").read_text("utf-8")
            # The page runs only its own inline script and style, talks only to this origin, and
            # cannot be framed: a status page is worth nothing to an attacker if it cannot be abused.
            csp = (
                f"default-src 'none'; script-src {_csp_hash(html, 'script')}; style-src {_csp_hash(html, 'style')}; "
                "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            )
            self._html_headers = [
                (b"content-security-policy", csp.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"no-referrer"),
            ]
            self._html = html.encode()
        return self._html


def _lifecycle_report(gateway: OllamaGateway) -> dict[str, Any] | None:
    """Loads in progress, loaded models with memory and expiry, GPU readings and decisions."""
    lifecycle = gateway.lifecycle
    if lifecycle is None:
        return None
    report = lifecycle.snapshot()
    guard = lifecycle.guard
    report["gpus"] = [
        {"index": d.index, "total_bytes": d.total, "used_bytes": d.used, "free_bytes": d.free} for d in guard.readings()
    ]
    report["nvml"] = guard.source is not None
    report["recent_load_seconds"] = {name: round(t, 3) for name, t in lifecycle.loader.clock.per_model.items()}
    report["guard_decisions"] = guard.history[-10:]
    return report
