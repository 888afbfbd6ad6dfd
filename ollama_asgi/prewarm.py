"""Pre-warming: load the model a client usually asks for next before it asks, and never at a request's cost.

The traffic model (``traffic``) predicts; a prediction is only a guess, so it is loaded with free
memory and an idle loader only, never evicting a loaded model, and it gives way to any real
request that needs either: a request's load cancels the pre-warms holding the loader and unloads
unused pre-warmed models where it needs their place. The predictions also choose what a request's
load evicts: the idle model the principals need furthest ahead, as Bélády would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ollama_asgi.backend import Backend
from ollama_asgi.catalog import BackendModels, ModelInfo
from ollama_asgi.errors import GatewayError
from ollama_asgi.lifecycle import Loader, LoadState
from ollama_asgi.settings import Settings
from ollama_asgi.vram import VramGuard

__all__ = ["Prewarmer"]

logger = logging.getLogger("ollama_asgi.lifecycle")


class Prewarmer:
    """Pre-warms the predicted models through the lifecycle's loader, within its VRAM guard's room."""

    def __init__(
        self, settings: Settings, loader: Loader, guard: VramGuard, *, default_num_ctx: Callable[[ModelInfo], int]
    ) -> None:
        self.settings = settings
        self.loader = loader
        self.guard = guard
        self._default_num_ctx = default_num_ctx  # for a model no request has sized yet
        self.tasks: set[asyncio.Task[None]] = set()  # pre-warms under way
        # Requests for a model let through and not yet finished (admission's swap gate, when on): a
        # model they wait for is needed now, whatever the predictions say.
        self.wanted: Callable[[str, str], bool] = lambda backend, model: False

    def maybe_prewarm(self, owner: Backend, current: str, principal: str) -> None:
        """After a request for ``current`` started or ended: pre-warm what ``principal`` asks for next."""
        traffic = owner.traffic
        prediction = traffic.predict(current, principal)
        if prediction is None or prediction.model == current:
            return
        target = prediction.model
        models, backend = owner.models, owner.name
        if models.loaded_with(target) is not None or any(b == backend for b, _ in self.loader.loading):
            return  # loaded already, or the loader is busy: a guess never queues beside real loads
        info = models.info.get(target)
        if info is not None and self.no_room(models, info, owner.num_ctx.get(target, 0)):
            return
        traffic.issued += 1
        traffic.warmed.add(target)
        task = asyncio.ensure_future(self.warm(owner, target))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def warm(self, owner: Backend, model: str) -> None:
        """Load ``model`` on ``owner`` as a pre-warm: giving way to requests, never evicting."""
        models, traffic = owner.models, owner.traffic
        try:
            info = await models.model_info(model)
            num_ctx = owner.num_ctx.get(info.name) or self._default_num_ctx(info)
            await self.loader.ensure_loaded(models, info, num_ctx, wait_limit=self.settings.load_timeout, patient=False)
            logger.info("pre-warmed %s on %s", model, models.backend.name)
        except GatewayError as exc:
            traffic.warmed.discard(model)
            logger.info("pre-warming %s skipped: %s", model, exc.message)

    def no_room(self, models: BackendModels, info: ModelInfo, num_ctx: int) -> str | None:
        """Why loading ``info`` now would need an eviction (a pre-warm never evicts), or None."""
        guard = self.guard
        others = sum(1 for name in models.loaded if name != info.name)
        if guard.max_loaded and others >= guard.max_loaded:
            return f"Ollama's limit of {guard.max_loaded} loaded models is reached"
        if guard.active:
            need, free = guard.expected_size(models, info, num_ctx), guard.free_bytes(models)
            if free < need:
                return f"{need} bytes needed, {max(free, 0)} free"
        return None

    def refuse(self, models: BackendModels, info: ModelInfo, num_ctx: int) -> None:
        """Before a pre-warm's load: give up where it would evict, or where a request waits for the loader."""
        backend = models.backend.name
        waiting = any(b == backend and m != info.name and s.patient for (b, m), s in self.loader.loading.items())
        why = "a request waits for the loader" if waiting else self.no_room(models, info, num_ctx)
        if why is not None:
            # ``models_busy``: a request that joined this pre-warm loads with a turn of its own.
            raise GatewayError(503, f"pre-warming '{info.name}' gave way: {why}", reason="models_busy")

    async def evict_furthest(self, owner: Backend | None, models: BackendModels, info: ModelInfo, num_ctx: int) -> None:
        """Make a request's room as Bélády would: the idle model the principals' predicted sequences
        need furthest ahead (or not at all) goes first. Where the predictions cannot tell the idle
        models apart, the VRAM guard chooses as it always does. ``owner``: the backend in service
        whose catalog ``models`` is (None: removed meanwhile, nothing to predict from)."""
        backend = models.backend.name
        uses: dict[str, float] | None = None
        while owner is not None and self.no_room(models, info, num_ctx) is not None:
            idle = [
                m
                for m in models.loaded
                if m != info.name and not models.in_flight.get(m) and (backend, m) not in self.loader.loading
            ]
            if len(idle) < 2:
                return
            if uses is None:
                uses = owner.traffic.next_uses()
                uses.update((m, 0.0) for m in idle if self.wanted(backend, m))
            never = float("inf")
            idle.sort(key=lambda m: (-uses.get(m, never), _last_used(models, m)))
            if uses.get(idle[0], never) == uses.get(idle[-1], never):
                return
            victim = idle[0]
            logger.info("evicting %s from %s: the predicted requests need it last", victim, backend)
            await self.loader.unload(models, victim)
            self.guard.evictions += 1

    async def give_way(self, owner: Backend, info: ModelInfo, num_ctx: int) -> None:
        """Before a request's load: stop pre-warms holding the loader, and unload unused pre-warmed
        models where the request's model needs their place, so it never waits or evicts for a guess."""
        models = owner.models
        if self.loader.ready(models, info, num_ctx):
            return
        backend = owner.name
        loading = self.loader.loading
        for (b, m), state in list(loading.items()):
            # Only the pre-warm itself waits on it: no request joined it.
            if b == backend and m != info.name and not state.patient and state.waiters <= 1:
                self._cancel_load((b, m), state)
        if (backend, info.name) in loading:
            return  # the request joins a load under way, which made its room already
        warmed = owner.traffic.warmed
        while self.no_room(models, info, num_ctx):
            unused = [m for m in models.loaded if m in warmed and not models.in_flight.get(m)]
            if not unused:
                return  # what is left to evict is the VRAM guard's choice, as without pre-warming
            warmed.discard(unused[0])
            logger.info("unloading pre-warmed %s on %s: a request needs its place", unused[0], backend)
            await self.loader.unload(models, unused[0])

    def _cancel_load(self, key: tuple[str, str], state: LoadState) -> None:
        task = state.task
        if task is None or task.done():
            return
        logger.info("pre-warming %s on %s gave way to a request's load", key[1], key[0])
        task.cancel()
        loading = self.loader.loading

        def settle(_: object) -> None:  # a task cancelled before it ran cleans nothing up itself
            if loading.get(key) is state:
                del loading[key]
            if not state.future.done():
                state.future.set_exception(GatewayError(503, "pre-warming gave way", reason="models_busy"))
                state.future.exception()

        task.add_done_callback(settle)


def _last_used(models: BackendModels, name: str) -> float:
    usage = models.usage.get(name)
    return usage.last_used if usage is not None else 0.0
