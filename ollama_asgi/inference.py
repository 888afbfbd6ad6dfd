"""The models of the backends in service: planned, loaded once, tracked in flight, pre-warmed.

``ModelLifecycle`` is the object the gateway holds for a request's model-aware stages, and the one
place their parts meet: ``prepare`` plans what goes upstream (``plan``: the context size, the
gateway's ``keep_alive`` and runner options, the native body); ``ensure_loaded`` makes sure the
model is in memory with that context before the request takes a slot, one load per model through
the loader (``lifecycle``) and the VRAM guard (``vram``); ``begin``/``end`` track requests in
flight per model, which the guard reads to never evict a busy model, and feed pre-warming
(``prewarm``). What is kept of a backend (its catalog, memory, load lock and traffic model) is the
``Backend``'s own: the lifecycle only holds the backends, so one that is removed takes all of it
along; it gives each its memory domain and polls their loaded models.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from collections.abc import Callable
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from ollama_asgi.auth import Principal
from ollama_asgi.backend import Backend
from ollama_asgi.catalog import BackendModels, ModelInfo
from ollama_asgi.lifecycle import Loader, LoadLock
from ollama_asgi.model_names import canonical_model
from ollama_asgi.plan import Planner, Prepared
from ollama_asgi.prewarm import Prewarmer
from ollama_asgi.protocol import ParsedRequest
from ollama_asgi.routing import Route
from ollama_asgi.settings import Settings
from ollama_asgi.upstream import Upstream
from ollama_asgi.vram import BackendMemory, MemoryDomain, NvmlSource, VramGuard, VramSource

__all__ = ["ModelLifecycle"]


class ModelLifecycle:
    """The backends in service and their models: each request planned (``planner``), its model loaded
    once (``loader``, within the ``guard``'s room) and counted in flight; predicted ones pre-warmed
    (``prewarmer``)."""

    def __init__(
        self,
        settings: Settings,
        backends: list[Backend],
        *,
        lock: LoadLock | None = None,
        vram_source: VramSource | None = None,
    ) -> None:
        self.settings = settings
        self._backends = {b.name: b for b in backends}  # the backends in service, by name
        self.guard = VramGuard(
            budget=settings.vram_budget,
            margin=settings.vram_margin,
            reserved=settings.vram_reserved,
            source=None,
            unload=self._unload,
            max_loaded=settings.max_loaded_models,
        )
        # ``vram_source`` stands for this host's GPUs (tests); otherwise NVML, one domain per GPU set.
        self._host_gpus = None if vram_source is None else MemoryDomain(vram_source)
        self._nvml: dict[tuple[int, ...] | None, MemoryDomain | None] = {}
        for backend in backends:
            self._attach_memory(backend)
        self.loader = Loader(
            keep_alive=settings.keep_alive,
            load_timeout=settings.load_timeout,
            lock=lock,
            before_load=self._before_load,
        )
        self.planner = Planner(settings, self._backends, self.loader.loading)
        self.prewarmer = Prewarmer(settings, self.loader, self.guard, default_num_ctx=self.planner.default_bucket)
        self.loader.warm_prompt = self._warm_prompt
        self.loader.runner_options = dict(settings.runner_options)
        # The guard and the loader ask each backend for its memory; servers on this host's GPUs share
        # one domain: their loads take turns and may evict each other's idle models.
        self.guard.memory_of = self._memory_of
        self.guard.memories = lambda: [b.memory for b in list(self._backends.values())]
        self.guard.peers = self._memory_peers
        self.loader.domain_lock = lambda models: self._memory_of(models).domain.load_lock
        self._poller: asyncio.Task[None] | None = None

    def switch_seconds(self, backend: str) -> float:
        """Expected seconds of a model switch on ``backend``: the loads seen so far, on average; before
        any finished, the age of the oldest load under way there (a lower bound, as for service times)."""
        seen = self.loader.clock.per_model
        if seen:
            return sum(seen.values()) / len(seen)
        started = [state.started for (name, _), state in self.loader.loading.items() if name == backend]
        return time.monotonic() - min(started) if started else 5.0

    @property
    def models(self) -> dict[str, BackendModels]:
        """Each backend's catalog, by backend name (a copy: the backends own them)."""
        return {name: backend.models for name, backend in self._backends.items()}

    @property
    def backends(self) -> list[Backend]:
        return list(self._backends.values())

    @property
    def context_choices(self) -> Counter[str]:
        """Why each ``num_ctx`` was chosen, counted: "bucket", "sticky", "client", "cap"."""
        return self.planner.context_choices

    @property
    def context_sizes(self) -> Counter[int]:
        return self.planner.context_sizes

    @property
    def reloads_avoided(self) -> int:
        """Requests that kept a loaded model's larger context instead of reloading it at their own."""
        return self.planner.reloads_avoided

    @property
    def wanted(self) -> Callable[[str, str], bool]:
        """Whether requests let through (admission's swap gate) wait for a model on a backend."""
        return self.prewarmer.wanted

    @wanted.setter
    def wanted(self, wanted: Callable[[str, str], bool]) -> None:
        self.prewarmer.wanted = wanted

    def _owner(self, models: BackendModels) -> Backend | None:
        """The backend in service whose catalog ``models`` is (None: removed meanwhile)."""
        backend = self._backends.get(models.backend.name)
        return backend if backend is not None and backend.models is models else None

    def _memory_of(self, models: BackendModels) -> BackendMemory:
        backend = self._owner(models)
        if backend is not None:
            return backend.memory
        return BackendMemory(models, self.settings.vram_budget)  # a removed backend's: nothing of it is kept

    def _memory_peers(self, models: BackendModels) -> list[BackendModels]:
        domain = self._memory_of(models).domain
        return [b.models for b in list(self._backends.values()) if b.memory.domain is domain]

    def _attach_memory(self, backend: Backend) -> None:
        """Give ``backend`` the memory domain of the GPUs of this host that are its own (those it
        names, or ``gpu_devices`` for a backend on this host), shared with every backend on them;
        any other backend has a domain of its own, where its budget and Ollama's sizes decide."""
        spec = backend.spec
        backend.memory.domain = self._gpu_domain(spec.gpus, spec.url) or MemoryDomain()

    def _gpu_domain(self, gpus: tuple[int, ...] | None, url: str) -> MemoryDomain | None:
        if gpus is None and not _on_this_host(url):
            return None  # a remote backend's GPUs are another machine's
        if gpus is None:
            gpus = self.settings.gpu_devices
        if self._host_gpus is not None or not self.settings.nvml:
            return self._host_gpus
        if gpus not in self._nvml:
            source = NvmlSource.available(gpus)
            self._nvml[gpus] = None if source is None else MemoryDomain(source)
        return self._nvml[gpus]

    def add_backend(self, backend: Backend) -> None:
        self._backends[backend.name] = backend
        self._attach_memory(backend)

    def remove_backend(self, name: str) -> None:
        """Forget a removed backend: no more polling, sizing or pre-warming there (what was kept
        of it, its memory, load lock and traffic model, was the backend's own and goes with it)."""
        self._backends.pop(name, None)

    # -- background -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start polling ``/api/ps`` (lazily, from the first request: mounted apps get no lifespan)."""
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while True:
            for backend in list(self._backends.values()):  # a backend removed meanwhile is polled no more
                await backend.models.refresh_ps()
            await asyncio.sleep(self.settings.ps_interval)

    async def aclose(self) -> None:
        for task in (self._poller, *self.prewarmer.tasks):
            if task is not None:
                task.cancel()
        await self.loader.aclose()

    async def _unload(self, models: BackendModels, name: str) -> None:
        await self.loader.unload(models, name)

    # -- per request ----------------------------------------------------------------------------------

    def _warm_prompt(self, model: str) -> str | None:
        for pattern, prompt in self.settings.warm_prompts:
            if fnmatchcase(model, pattern) or fnmatchcase(model.removesuffix(":latest"), pattern):
                return prompt
        return None

    async def prepare(self, route: Route, parsed: ParsedRequest, principal: Principal, backend: Upstream) -> Prepared:
        """What goes upstream for this request; fetches the model's facts from Ollama the first time."""
        info = await self.planner.model_info(route, parsed, backend)
        if self._poller is None or self._poller.done():
            self.start()
        return self.planner.prepare(route, parsed, principal, backend, info)

    def prepare_now(
        self, route: Route, parsed: ParsedRequest, principal: Principal, backend: Upstream
    ) -> Prepared | None:
        """``prepare`` without a coroutine when the model's facts are known (every request but the first)."""
        assert parsed.model is not None
        info = self._backends[backend.name].models.info.get(canonical_model(parsed.model))
        if info is None:
            return None
        if self._poller is None or self._poller.done():
            self.start()
        return self.planner.prepare(route, parsed, principal, backend, info)

    def is_ready(self, prepared: Prepared) -> bool:
        """Loaded with the chosen ``num_ctx`` already: nothing to wait for (the common case, checked
        without a coroutine)."""
        return not prepared.num_ctx or self.loader.ready(prepared.models, prepared.info, prepared.num_ctx)

    async def ensure_loaded(self, prepared: Prepared, *, wait_limit: float) -> None:
        if prepared.num_ctx:
            if self.settings.prewarm:
                await self.prewarmer.give_way(prepared.backend, prepared.info, prepared.num_ctx)
            await self.loader.ensure_loaded(prepared.models, prepared.info, prepared.num_ctx, wait_limit=wait_limit)

    def begin(self, prepared: Prepared) -> None:
        models = prepared.models
        name = prepared.info.name
        in_flight = models.in_flight
        in_flight[name] = in_flight.get(name, 0) + 1  # not ``+= 1``: a Counter's __missing__ is Python
        models.touch(name, time.time())
        if self.settings.prewarm:
            self.prewarmer.maybe_prewarm(prepared.backend, name, prepared.principal)

    def end(self, prepared: Prepared) -> None:
        models = prepared.models
        name = prepared.info.name
        in_flight = models.in_flight
        left = in_flight.get(name, 0) - 1
        if left > 0:
            in_flight[name] = left
        else:
            in_flight.pop(name, None)
            if self.settings.prewarm:
                # A pre-warm put off while a load ran may go now.
                self.prewarmer.maybe_prewarm(prepared.backend, name, prepared.principal)

    async def _before_load(self, models: BackendModels, info: ModelInfo, num_ctx: int, *, patient: bool) -> None:
        """The VRAM guard, with a pre-warm refused where it would evict or a real load waits for the loader."""
        if not patient:
            self.prewarmer.refuse(models, info, num_ctx)
        elif self.settings.prewarm and self._memory_of(models).source is None:
            # With NVML readings freed memory shows late, so there the guard alone evicts.
            await self.prewarmer.evict_furthest(self._owner(models), models, info, num_ctx)
        await self.guard.before_load(models, info, num_ctx, patient=patient)

    def snapshot(self) -> dict[str, object]:
        """Loaded models, loads in progress and decisions, for status and metrics."""
        return {
            "backends": {
                name: {
                    "loaded": {
                        m.name: {"num_ctx": m.num_ctx, "size_vram": m.size_vram, "expires_at": m.expires_at}
                        for m in models.loaded.values()
                    },
                    "in_flight": dict(models.in_flight),
                    "fragmentation": self.guard.fragmentation(models),
                }
                for name, models in self.models.items()
            },
            "loading": [
                {"backend": b, "model": m, "num_ctx": s.num_ctx, "waiters": s.waiters}
                for (b, m), s in self.loader.loading.items()
            ],
            "loads": self.loader.loads,
            "coalesced": self.loader.coalesced,
            "load_failures": self.loader.failures,
            "evictions": self.guard.evictions,
            "context_choices": dict(self.context_choices),
            "reloads_avoided": self.reloads_avoided,
            "prewarm": {
                b.name: {"issued": b.traffic.issued, "hits": b.traffic.hits, "misses": b.traffic.misses}
                for b in self.backends
            },
        }


def _on_this_host(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
