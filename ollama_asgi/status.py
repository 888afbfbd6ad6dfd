"""``/_gateway/status``: what the gateway and its backends are doing now, as JSON or a live page.

The JSON is for tools and the page; a browser (``Accept`` preferring ``text/html``) gets a small
self-contained page that polls the JSON every second and draws bars for queues and model memory.
Loaded models come from each backend's ``/api/ps``, fetched with a short timeout and cached for a
second, so a page left open, or many of them, costs Ollama at most one call per second.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import orjson

from ollama_asgi._version import __version__
from ollama_asgi.health import BackendWatch
from ollama_asgi.inference import ModelLifecycle
from ollama_asgi.observed import GatewayParts, snapshot
from ollama_asgi.types import Scope

__all__ = ["StatusPage", "prefers_html"]

_RECENT_GAPS = 20


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

    def __init__(self, parts: GatewayParts, health: BackendWatch, started_at: float) -> None:
        self.parts = parts
        self.health = health
        self.started_at = started_at
        self._html: bytes | None = None
        self._html_headers: list[tuple[bytes, bytes]] = []

    async def report(self) -> dict[str, Any]:
        await self.health.refresh()
        now = snapshot(self.parts, self.health)
        redis: dict[str, Any] | None = None
        if now.redis_up is not None:
            redis = {"up": now.redis_up, "error": now.redis_error}
        return {
            "version": __version__,
            "started_at": datetime.fromtimestamp(self.started_at, UTC).isoformat().replace("+00:00", "Z"),
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "max_queue": now.max_queue,
            "backends": [
                {
                    "name": b.name,
                    "url": b.health.url,
                    "up": b.health.up,
                    "latency_seconds": None if b.health.latency is None else round(b.health.latency, 6),
                    "error": b.health.error,
                    "breaker": b.breaker,
                    "draining": b.draining,
                    "models": b.health.models,
                }
                for b in now.backends
                if b.health is not None
            ],
            "queues": [
                {
                    "backend": q.backend,
                    "model": q.model,
                    "pool": q.pool,
                    "in_flight": q.in_flight,
                    "waiting": q.waiting,
                    "capacity": q.capacity,
                    "service_time_seconds": round(q.service_time, 6),
                    "refill_gaps_seconds": [round(g, 6) for g in q.refill_gaps[-_RECENT_GAPS:]],
                }
                for q in now.queues
            ],
            "redis": redis,
            "lifecycle": _lifecycle_report(self.parts.lifecycle),
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


def _lifecycle_report(lifecycle: ModelLifecycle | None) -> dict[str, Any] | None:
    """Loads in progress, loaded models with memory and expiry, GPU readings and decisions."""
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
