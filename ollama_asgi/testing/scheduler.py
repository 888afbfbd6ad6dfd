"""Ollama's scheduler: serial loads, reloads, eviction, parallel slots and keep_alive expiry."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from ollama_asgi.testing.models import EmulatedModel
from ollama_asgi.testing.records import EmulatorStats, LoadedModelInfo
from ollama_asgi.testing.wire import BUSY_MESSAGE, FOREVER_NS, ApiError, RunnerOptions, human_bytes, rfc3339

__all__ = ["DeviceBackend", "FifoSlots", "Lease", "Runner", "Scheduler", "SchedulerConfig"]


class DeviceBackend(Protocol):
    """Real device memory behind loads (``ollama_asgi.testing.gpu.GpuBackend``); None: loads are modelled."""

    async def load(self, key: str, size: int, memory: int) -> Any: ...

    def step(self, allocation: Any) -> None: ...

    def release(self, allocation: Any) -> None: ...


class FifoSlots:
    """A counting semaphore that serves waiters strictly in arrival order, with no bound or timeout.

    Ollama's runner uses ``golang.org/x/sync/semaphore`` (FIFO); so does its pending queue, which is
    a channel drained by one goroutine. ``waiting`` is what the pending-queue limit is checked against.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def busy(self) -> bool:
        return self._free == 0

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over just as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class Runner:
    """One loaded (or loading) model instance; keyed by blob digest, as Ollama keys by model path."""

    def __init__(
        self, model: EmulatedModel, options: RunnerOptions, parallel: int, memory: int, session: float
    ) -> None:
        self.model = model
        self.options = options
        self.parallel = parallel
        self.memory = memory
        self.session = session
        self.slots = FifoSlots(parallel)
        self.refcount = 0
        self.loading = True
        self.doomed = False
        self.expires_ns = _expiry(session)
        self.timer: asyncio.TimerHandle | None = None
        self.gone = asyncio.Event()
        self.device: DeviceBackend | None = None
        self.allocation: Any = None  # its memory on the device, when the scheduler has one

    def token(self) -> None:
        """One generated token's work on the device (nothing when loads are modelled)."""
        if self.device is not None and self.allocation is not None:
            self.device.step(self.allocation)

    def info(self) -> LoadedModelInfo:
        return LoadedModelInfo(
            name=self.model.name,
            digest=self.model.digest,
            num_ctx=self.options.num_ctx,
            parallel=self.parallel,
            size_vram=self.memory,
            expires_at=rfc3339(self.expires_ns),
            in_flight=self.refcount,
            loading=self.loading,
            keep_alive=self.session,
        )


def _expiry(session: float) -> int:
    now = time.time_ns()
    if math.isinf(session) or session * 1e9 >= FOREVER_NS:
        return now + FOREVER_NS
    return now + int(session * 1e9)


@dataclass
class Lease:
    """A reference to a runner held for one request; ``release()`` exactly once."""

    runner: Runner
    scheduler: Scheduler
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.scheduler.release(self.runner)


@dataclass
class SchedulerConfig:
    parallel: int = 1
    max_queue: int = 512
    max_loaded_models: int = 3
    vram_bytes: int = 24 * 2**30
    default_keep_alive: float = 300.0
    load_base_seconds: float = 0.0
    load_bytes_per_second: float = math.inf


class Scheduler:
    """Places requests on runners the way ``server/sched.go`` does.

    The fast path takes a loaded runner whose runner options match without queueing. Everything
    else waits, FIFO, for the single scheduling turn (``max_queue`` bounds the waiters, 503 beyond),
    where reloads, evictions and loads happen one at a time. A load runs inside the first waiting
    request's task, so that client going away aborts it.
    """

    def __init__(self, config: SchedulerConfig, stats: EmulatorStats) -> None:
        self.config = config
        self.stats = stats
        self.runners: dict[str, Runner] = {}
        self._turn = FifoSlots(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.device: DeviceBackend | None = None  # set by ollama_asgi.testing.gpu.attach_gpu

    # -- lifecycle

    def bind(self) -> None:
        """Start afresh when first used from a new event loop (a restarted server)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self.reset()
            self._loop = loop

    def reset(self) -> None:
        """Forget every runner without counting unloads: the process they lived in is gone."""
        for runner in self.runners.values():
            if runner.timer:
                runner.timer.cancel()
            self._free(runner)
        self.runners.clear()
        self._turn = FifoSlots(1)

    # -- requests

    def parallel_for(self, model: EmulatedModel) -> int:
        if model.is_embedding:
            return 1
        return max(1, model.parallel if model.parallel is not None else self.config.parallel)

    async def acquire(self, model: EmulatedModel, options: RunnerOptions, keep_alive: float | None) -> Lease:
        """Get a runner for ``model`` with ``options`` loaded, loading or reloading as needed."""
        self.bind()
        runner = self.runners.get(model.digest)
        if runner is not None and self._usable(runner, options):
            return self._use(runner, keep_alive)
        if self._turn.busy and self._turn.waiting >= self.config.max_queue:
            self.stats.rejected_busy += 1
            raise ApiError(503, BUSY_MESSAGE)
        await self._turn.acquire()
        try:
            return await self._schedule(model, options, keep_alive)
        finally:
            self._turn.release()

    def _usable(self, runner: Runner, options: RunnerOptions) -> bool:
        return not runner.loading and not runner.doomed and runner.options.matches(options)

    async def _schedule(self, model: EmulatedModel, options: RunnerOptions, keep_alive: float | None) -> Lease:
        parallel = self.parallel_for(model)
        memory = model.memory_bytes(options.num_ctx, parallel)
        while True:
            runner = self.runners.get(model.digest)
            if runner is not None:
                if self._usable(runner, options):
                    return self._use(runner, keep_alive)
                if not runner.options.matches(options):
                    self.stats.reloads += 1
                await self._retire(runner)
                continue
            if memory > self.config.vram_bytes:
                raise ApiError(
                    500,
                    f"model requires more system memory ({human_bytes(memory)}) than is available "
                    f"({human_bytes(self.config.vram_bytes)})",
                )
            victim = self._victim(memory)
            if victim is not None:
                self.stats.evictions += 1
                await self._retire(victim)
                continue
            return await self._load(model, options, parallel, memory, keep_alive)

    def _victim(self, memory: int) -> Runner | None:
        """``findRunnerToUnload``: nothing if the model fits, else an idle runner, else the shortest."""
        limit = self.config.max_loaded_models or 3
        used = sum(runner.memory for runner in self.runners.values())
        if not self.runners or (len(self.runners) < limit and used + memory <= self.config.vram_bytes):
            return None
        ordered = sorted(self.runners.values(), key=lambda r: (r.session, r.model.digest))
        idle = [runner for runner in ordered if runner.refcount == 0]
        return (idle or ordered)[0]

    async def _retire(self, runner: Runner) -> None:
        """Expire ``runner`` now, or as soon as its in-flight requests finish, and wait for it."""
        runner.doomed = True
        runner.session = 0.0
        if runner.timer:
            runner.timer.cancel()
            runner.timer = None
        if runner.refcount == 0:
            self._unload(runner)
        await runner.gone.wait()

    async def _load(
        self,
        model: EmulatedModel,
        options: RunnerOptions,
        parallel: int,
        memory: int,
        keep_alive: float | None,
    ) -> Lease:
        session = keep_alive if keep_alive is not None else self.config.default_keep_alive
        runner = Runner(model, options, parallel, memory, session)
        self.runners[model.digest] = runner
        seconds = self.config.load_base_seconds
        if model.size and self.config.load_bytes_per_second > 0:
            seconds += model.size / self.config.load_bytes_per_second
        try:
            if self.device is not None:
                runner.device = self.device
                runner.allocation = await self.device.load(model.digest, model.size, memory)
            elif seconds > 0:
                await asyncio.sleep(seconds)
        except ApiError:
            # The device could not load it (out of memory): the runner never started.
            if self.runners.get(model.digest) is runner:
                del self.runners[model.digest]
            runner.gone.set()
            raise
        except BaseException:
            # "client connection closed before server finished loading, aborting load"
            if self.runners.get(model.digest) is runner:
                del self.runners[model.digest]
            runner.gone.set()
            self.stats.aborted_loads += 1
            raise
        runner.loading = False
        self.stats.loads += 1
        return self._use(runner, keep_alive)

    def _use(self, runner: Runner, keep_alive: float | None) -> Lease:
        if keep_alive is not None:
            runner.session = keep_alive  # the last explicit keep_alive wins
        runner.refcount += 1
        if runner.timer:
            runner.timer.cancel()
            runner.timer = None
        runner.expires_ns = _expiry(runner.session)
        return Lease(runner, self)

    def release(self, runner: Runner) -> None:
        runner.refcount -= 1
        if runner.refcount > 0 or self.runners.get(runner.model.digest) is not runner:
            return
        if runner.doomed or runner.session <= 0:
            self._unload(runner)
            return
        runner.expires_ns = _expiry(runner.session)
        if not math.isinf(runner.session) and runner.session * 1e9 < FOREVER_NS:
            loop = asyncio.get_running_loop()
            runner.timer = loop.call_later(runner.session, self._expire, runner)

    def _expire(self, runner: Runner) -> None:
        runner.timer = None
        if runner.refcount == 0:
            self._unload(runner)

    def _unload(self, runner: Runner) -> None:
        if self.runners.get(runner.model.digest) is runner:
            del self.runners[runner.model.digest]
            self.stats.unloads += 1
        if runner.timer:
            runner.timer.cancel()
            runner.timer = None
        self._free(runner)
        runner.gone.set()

    def _free(self, runner: Runner) -> None:
        if runner.device is not None and runner.allocation is not None:
            allocation, runner.allocation = runner.allocation, None
            runner.device.release(allocation)

    def expire(self, model: EmulatedModel) -> None:
        """``expireRunner``: unload now if idle, otherwise when its requests finish."""
        runner = self.runners.get(model.digest)
        if runner is None:
            return
        runner.session = 0.0
        runner.expires_ns = time.time_ns()
        if runner.timer:
            runner.timer.cancel()
            runner.timer = None
        if runner.refcount == 0 and not runner.loading:
            self._unload(runner)

    def loaded(self) -> list[Runner]:
        """Runners by ``expires_at``, latest first (``/api/ps`` order)."""
        return sorted(self.runners.values(), key=lambda r: r.expires_ns, reverse=True)
