"""What is known of each backend's health: checked through its ``/api/ps`` on demand, noted by requests.

``/_gateway/status`` and the metrics read the same states, so a page left open and a scrape every
few seconds together cost Ollama at most one ``/api/ps`` call per backend per second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from ollama_asgi.upstream import Upstream, UpstreamError

__all__ = ["BackendState", "BackendWatch"]

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
        state = self.states.get(backend)
        if state is not None and state.up is up:
            return  # nothing new, as for nearly every request (a replaced backend's state is renewed by refresh)
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
