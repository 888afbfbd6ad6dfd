"""Model loads owned by the gateway: one load per cold model, whatever the burst.

In Ollama a load runs under the first request's context, so that client's disconnect aborts the
load for everyone, and a burst for a cold model queues behind it without bound. Here the load is
the gateway's own request (an empty-prompt generate with the gateway's ``keep_alive`` and the
chosen ``num_ctx``), started once per backend and model; every request for that model waits on
the same future, bounded by its own deadline, and is then admitted through the normal slots. With
Redis, a lock with a lease makes the load single-flight across workers and replicas too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from ollama_asgi.catalog import BackendModels, ModelInfo
from ollama_asgi.errors import GatewayError
from ollama_asgi.model_names import canonical_model
from ollama_asgi.state import LoadLock, StateUnavailable
from ollama_asgi.upstream import UpstreamError

__all__ = ["BeforeLoad", "LoadLock", "Loader", "LoadState"]

logger = logging.getLogger("ollama_asgi.lifecycle")


class BeforeLoad(Protocol):
    """What runs before each load (the VRAM guard); ``patient``: it may wait for busy models to finish."""

    def __call__(self, models: BackendModels, info: ModelInfo, num_ctx: int, *, patient: bool) -> Awaitable[None]: ...


@dataclass(slots=True)
class LoadState:
    """A load in progress, visible to status and metrics."""

    model: str
    num_ctx: int
    started: float
    waiters: int = 0
    patient: bool = True  # False for a pre-warm: a guess never waits for, nor holds up, busy models
    task: asyncio.Task[None] | None = None  # the load itself, which a pre-warm's owner may cancel
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class _LoadClock:
    """Observed load seconds per model, for Retry-After and deadlines; bytes/s for unseen models."""

    def __init__(self) -> None:
        self.per_model: dict[str, float] = {}
        self.bytes_per_second = 0.0

    def record(self, info: ModelInfo, seconds: float) -> None:
        old = self.per_model.get(info.name)
        self.per_model[info.name] = seconds if old is None else 0.7 * old + 0.3 * seconds
        if info.size and seconds > 0:
            rate = info.size / seconds
            self.bytes_per_second = rate if not self.bytes_per_second else 0.7 * self.bytes_per_second + 0.3 * rate

    def expected(self, info: ModelInfo) -> float:
        if info.name in self.per_model:
            return self.per_model[info.name]
        if self.bytes_per_second and info.size:
            return info.size / self.bytes_per_second
        return 5.0  # nothing measured yet: a small model from a warm page cache


class Loader:
    """Single-flight loads per backend and model, with the gateway's keep_alive."""

    def __init__(
        self,
        *,
        keep_alive: str,
        load_timeout: float,
        lock: LoadLock | None = None,
        before_load: BeforeLoad | None = None,
    ) -> None:
        self.keep_alive = keep_alive
        self.load_timeout = load_timeout
        self.lock = lock or LoadLock()
        self.before_load = before_load  # the VRAM guard: evict or refuse before a load
        self.loading: dict[tuple[str, str], LoadState] = {}
        self.clock = _LoadClock()
        self.loads = 0
        self.coalesced = 0
        self.failures = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_loaded: Callable[[str, str, float], object] | None = None  # (backend, model, seconds)
        self.changes = 0  # loads and unloads made, so views of Ollama's loaded models know they are stale
        self.warm_prompt: Callable[[str], str | None] = lambda model: None  # a system prompt to pre-fill
        self.runner_options: dict[str, object] = {}  # sent with every load, as with every request: no reload
        self.prefix_warms = 0
        # One load at a time per memory domain (a backend, or every backend on this host's GPUs), as
        # Ollama itself loads one at a time: the VRAM guard's reading and the load it allows must not
        # interleave with another model's, or both would count the same free memory. The lock is the
        # domain's, which the backends own; a loader on its own loads one model at a time.
        self._own_lock = asyncio.Lock()
        self.domain_lock: Callable[[BackendModels], asyncio.Lock] = lambda models: self._own_lock

    def expected_load_seconds(self, info: ModelInfo) -> float:
        return self.clock.expected(info)

    @staticmethod
    def ready(models: BackendModels, info: ModelInfo, num_ctx: int) -> bool:
        """Loaded on ``models.backend`` with ``num_ctx`` (or a runner whose context is not known)."""
        loaded = models.loaded_with(info.name)
        return loaded is not None and (loaded.num_ctx == num_ctx or not loaded.num_ctx)

    async def ensure_loaded(
        self, models: BackendModels, info: ModelInfo, num_ctx: int, *, wait_limit: float, patient: bool = True
    ) -> None:
        """Return once ``info`` is loaded on ``models.backend`` with ``num_ctx``; start the load if needed.

        ``patient=False`` (pre-warming) gives up at once where a request would wait for busy models.
        """
        while True:
            if self.ready(models, info, num_ctx):
                return
            key = (models.backend.name, info.name)
            state = self.loading.get(key)
            if state is None:
                state = LoadState(info.name, num_ctx, time.monotonic(), patient=patient)
                self.loading[key] = state
                task = state.task = asyncio.ensure_future(self._load(models, info, num_ctx, state))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self.coalesced += 1
            state.waiters += 1
            try:
                async with asyncio.timeout(wait_limit):
                    await asyncio.shield(state.future)
            except TimeoutError:
                remaining = self.expected_load_seconds(info) - (time.monotonic() - state.started)
                raise GatewayError(
                    503,
                    f"model '{info.name}' is still loading after {wait_limit:g}s",
                    [(b"retry-after", str(max(1, math.ceil(remaining))).encode())],
                ) from None
            except GatewayError as exc:
                if patient and not state.patient and exc.reason == "models_busy":
                    continue  # a pre-warm gave up on busy models; a request waits its turn with a load of its own
                raise
            finally:
                state.waiters -= 1
            if state.num_ctx == num_ctx:
                return
            # The load that finished was for another context size; go round and load ours.

    async def _load(self, models: BackendModels, info: ModelInfo, num_ctx: int, state: LoadState) -> None:
        key = (models.backend.name, info.name)
        lock_key = f"load:{models.backend.name}:{info.name}"
        try:
            token = await self._lock(lock_key)
            try:
                async with self.domain_lock(models):
                    await models.refresh_ps()  # another worker may have loaded it while we waited
                    loaded = models.loaded_with(info.name)
                    if loaded is None or (loaded.num_ctx and loaded.num_ctx != num_ctx):
                        if self.before_load is not None:
                            await self._make_room(models, info, num_ctx, self.before_load, state.patient)
                        await self._send_load(models, info, num_ctx)
                        await models.refresh_ps()
            finally:
                if token is not None:
                    await self._unlock(lock_key, token)
            state.future.set_result(None)
        except (GatewayError, UpstreamError) as exc:
            self.failures += 1
            state.future.set_exception(exc)
        except Exception as exc:  # the load is ours: never let it die silently
            self.failures += 1
            logger.exception("loading %s on %s failed", info.name, models.backend.name)
            state.future.set_exception(GatewayError(502, f"loading model '{info.name}' failed: {exc}"))
        finally:
            self.loading.pop(key, None)
            if not state.future.done():  # cancelled: the gateway is stopping
                retry = [(b"retry-after", str(max(1, math.ceil(self.expected_load_seconds(info)))).encode())]
                state.future.set_exception(GatewayError(503, f"loading model '{info.name}' was interrupted", retry))
            if state.future.done() and not state.future.cancelled():
                state.future.exception()  # mark retrieved: waiters that timed out never read it

    async def _make_room(
        self,
        models: BackendModels,
        info: ModelInfo,
        num_ctx: int,
        before_load: BeforeLoad,
        patient: bool,
    ) -> None:
        """The guard's turn before the load; it may wait for a busy model, but no longer than a load may take."""
        try:
            async with asyncio.timeout(self.load_timeout):
                await before_load(models, info, num_ctx, patient=patient)
        except TimeoutError:
            retry = [(b"retry-after", str(max(1, math.ceil(self.expected_load_seconds(info)))).encode())]
            raise GatewayError(
                503, f"no room to load '{info.name}': the loaded models stayed busy for {self.load_timeout:g}s", retry
            ) from None

    async def _lock(self, key: str) -> str | None:
        deadline = time.monotonic() + self.load_timeout
        while True:
            try:
                token = await self.lock.acquire(key, self.load_timeout)
            except StateUnavailable:
                return None  # fail open: a duplicate load costs time, not correctness
            if token is not None:
                return token
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.1)  # another worker loads it; its release wakes us within 100 ms

    async def _unlock(self, key: str, token: str) -> None:
        try:
            await self.lock.release(key, token)
        except StateUnavailable:
            pass

    async def _send_load(self, models: BackendModels, info: ModelInfo, num_ctx: int) -> None:
        body: dict[str, object] = {"model": info.name, "keep_alive": self.keep_alive}
        path = "/api/generate"
        if info.embedding_only:
            path, body["input"] = "/api/embed", []
        body["options"] = {**self.runner_options, "num_ctx": num_ctx}
        started = time.monotonic()
        status, answer = await models.backend.call_json("POST", path, body, within=self.load_timeout)
        if status != 200:
            message = str((answer.get("error") if isinstance(answer, dict) else None) or f"loading failed ({status})")
            if status == 503:  # Ollama's full queue ("server busy") names no time; every waiter gets one
                retry = [(b"retry-after", str(max(1, math.ceil(self.expected_load_seconds(info)))).encode())]
                raise GatewayError(503, message, retry, reason="upstream_busy")
            raise GatewayError(status if 400 <= status < 600 else 502, message)
        self.loads += 1
        self.changes += 1
        seconds = time.monotonic() - started
        self.clock.record(info, seconds)
        if self.on_loaded is not None:
            self.on_loaded(models.backend.name, info.name, seconds)
        prefix = self.warm_prompt(info.name)
        if prefix and not info.embedding_only:
            await self._warm_prefix(models, info, num_ctx, prefix)
        logger.info("loaded %s on %s with num_ctx %d", info.name, models.backend.name, num_ctx)

    async def _warm_prefix(self, models: BackendModels, info: ModelInfo, num_ctx: int, prefix: str) -> None:
        """Evaluate a configured system prompt once, so Ollama's prompt cache holds it for real requests."""
        body = {
            "model": info.name,
            "system": prefix,
            "prompt": ".",
            "stream": False,
            "keep_alive": self.keep_alive,
            "options": {**self.runner_options, "num_ctx": num_ctx, "num_predict": 1},
        }
        try:
            status, _ = await models.backend.call_json("POST", "/api/generate", body, within=self.load_timeout)
        except UpstreamError as exc:
            logger.info("warming the prompt of %s failed: %s", info.name, exc)
            return
        if status == 200:
            self.prefix_warms += 1

    async def unload(self, models: BackendModels, model: str) -> None:
        """Ask Ollama to unload ``model`` now (keep_alive 0); it frees memory once idle."""
        name = canonical_model(model)
        info = models.info.get(name)
        path = "/api/embed" if info is not None and info.embedding_only else "/api/generate"
        body: dict[str, object] = {"model": name, "keep_alive": 0}
        if path == "/api/embed":
            body["input"] = []
        try:
            await models.backend.call_json("POST", path, body)
        except UpstreamError as exc:
            logger.warning("unloading %s on %s failed: %s", name, models.backend.name, exc)
        models.loaded.pop(name, None)
        self.changes += 1

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        mine = [task for task in tasks if task.get_loop() is loop]
        if mine:  # let them release their load locks before the shared store closes
            await asyncio.gather(*mine, return_exceptions=True)
