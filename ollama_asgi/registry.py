"""The backends in service: adding, removing and draining them at run time, and closing them.

The registry holds the one list of ``Backend`` objects that placement chooses from and the
lifecycle polls, and it alone changes it. Removing a backend takes it out of every part that keeps
something of it (placement's spills, the lifecycle's catalog and poller; its slots, queues and
model turns are its own and go with it) and closes its HTTP client once the requests still on it
have finished. With Redis, every change
is published as one versioned document, and each worker applies what the others published, so
all workers and replicas agree on the list.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from ollama_asgi.backend import Backend, BackendView
from ollama_asgi.errors import ConfigError, GatewayError
from ollama_asgi.inference import ModelLifecycle
from ollama_asgi.placement import Placement
from ollama_asgi.settings import Settings
from ollama_asgi.state import StateUnavailable
from ollama_asgi.upstream import Upstream

if TYPE_CHECKING:
    from ollama_asgi.state.redis import RedisState

__all__ = ["BackendRegistry"]

logger = logging.getLogger("ollama_asgi")

_CLOSE_CHECK = 0.5  # seconds between checks that a removed backend's last request has finished


class BackendRegistry:
    """Owns the backend list: add, remove, drain, close, and its sharing through Redis.

    ``backends`` is placement's list and ``upstreams`` the list of their clients that telemetry
    follows: both are changed in place, here only.
    """

    def __init__(
        self,
        settings: Settings,
        backends: list[Backend],
        *,
        placement: Placement,
        lifecycle: ModelLifecycle | None,
        shared: RedisState | None = None,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.upstreams: list[Upstream] = [b.upstream for b in backends]
        self._placement = placement
        self._lifecycle = lifecycle
        self._shared = shared
        self._version = 0
        self._sync: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # removed backends waiting for their last request

    def by_name(self, name: str) -> Backend | None:
        return next((b for b in self.backends if b.name == name), None)

    def views(self) -> list[BackendView]:
        """Every backend now, as health, status and the backends endpoint report it."""
        now = time.monotonic()
        return [b.view(now) for b in list(self.backends)]

    # -- changes ----------------------------------------------------------------------------------

    def add(self, entry: object) -> Backend:
        """Add a backend (``entry`` as in ``upstreams``: a URL or a mapping); 400 if malformed, 409 if its name is taken."""
        try:
            (spec,) = Settings.from_mapping({"upstreams": [entry]}).backends
        except ConfigError as exc:
            raise GatewayError(400, str(exc)) from None
        if not isinstance(entry, dict) or "name" not in entry:
            spec = dataclasses.replace(spec, name=self._free_name())
        if self.by_name(spec.name) is not None:
            raise GatewayError(409, f"a backend named {spec.name!r} exists already")
        backend = Backend.from_spec(spec, self.settings)
        self.backends.append(backend)
        self.upstreams.append(backend.upstream)
        if self._lifecycle is not None:
            self._lifecycle.add_backend(backend)
        logger.warning("backend %s added (%s)", spec.name, spec.url)
        return backend

    def _free_name(self) -> str:
        """``backend-{n}`` for an unnamed backend, ``n`` its place in the list unless that name is taken."""
        taken = {b.name for b in self.backends}
        n = len(self.backends)
        while f"backend-{n}" in taken:
            n += 1
        return f"backend-{n}"

    def remove(self, name: str) -> Backend:
        """Take a backend out for good; requests already on it finish, then its client is closed."""
        backend = self.by_name(name)
        if backend is None:
            raise GatewayError(404, f"no backend named {name!r}")
        if len(self.backends) == 1:
            raise GatewayError(409, "the last backend cannot be removed")
        self.backends.remove(backend)
        self.upstreams.remove(backend.upstream)
        self._placement.forget(name)
        if self._lifecycle is not None:
            self._lifecycle.remove_backend(name)
        try:
            task = asyncio.get_running_loop().create_task(self._close_when_idle(backend))
        except RuntimeError:  # no loop: nothing can be in flight on it either
            pass
        else:
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        logger.warning("backend %s removed", name)
        return backend

    def drain(self, name: str, draining: bool = True) -> Backend:
        backend = self.by_name(name)
        if backend is None:
            raise GatewayError(404, f"no backend named {name!r}")
        backend.draining = draining
        logger.warning("backend %s %s", name, "draining" if draining else "back in service")
        return backend

    async def _close_when_idle(self, backend: Backend) -> None:
        deadline = time.monotonic() + max(self.settings.drain_timeout, self.settings.read_timeout)
        while time.monotonic() < deadline:
            if not (backend.upstream.relaying or backend.slots.in_flight):
                break
            await asyncio.sleep(_CLOSE_CHECK)
        await backend.aclose()

    async def aclose(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
        for task in list(self._closing):
            task.cancel()
        for backend in self.backends:
            await backend.aclose()

    # -- shared through Redis, so every worker and replica agrees ---------------------------------

    def start_sync(self) -> None:
        """Follow the other workers' changes (started lazily: mounted apps get no lifespan)."""
        if self._shared is not None and (self._sync is None or self._sync.done()):
            self._sync = asyncio.ensure_future(self._follow())

    async def publish(self) -> None:
        """Share this worker's list; without Redis, or while it is down, the change stays local."""
        if self._shared is None:
            return
        document = [view.document() for view in self.views()]
        try:
            self._version = await self._shared.put_document("backends", document)
        except StateUnavailable:
            logger.warning("backend change not shared: Redis is unavailable; other workers keep their view")

    async def _follow(self) -> None:
        """Apply backend changes other workers published (checked every health interval)."""
        assert self._shared is not None
        while True:
            await asyncio.sleep(self.settings.health_interval)
            try:
                found = await self._shared.get_document("backends", newer_than=self._version)
            except StateUnavailable:
                continue
            if found is not None:
                self._version, document = found
                self.apply(document)

    def apply(self, document: object) -> None:
        """Make this worker's list the published one (names absent there are removed, new ones added)."""
        if not isinstance(document, list):
            return
        wanted = {str(entry["name"]): entry for entry in document if isinstance(entry, dict)}
        for backend in list(self.backends):
            if backend.name not in wanted and len(self.backends) > 1:
                self.remove(backend.name)
        for name, entry in wanted.items():
            if self.by_name(name) is None:
                self.add({k: v for k, v in entry.items() if k != "draining"})
            self.drain(name, bool(entry.get("draining")))
