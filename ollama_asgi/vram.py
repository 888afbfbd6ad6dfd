"""GPU memory as a cache the gateway manages: readings, a guard before each load, fragmentation.

Ollama evicts on its own only when a new model does not fit, and then waits for the victim's
requests to finish while every new request queues behind it. The guard decides earlier: before
the gateway loads a model it checks free memory (NVML when available, otherwise a configured
budget minus what ``/api/ps`` says is loaded), and unloads the least valuable idle models until
the new one fits. A model with requests in flight is never chosen; if nothing idle is left, the
load is refused with a Retry-After rather than queued blindly. Ollama's loaded-model limit is not
memory: a load that only needs a slot among the loaded models waits for one to go idle, as it
would in Ollama.

Readings are per backend: each ``Backend`` owns a ``BackendMemory``, and NVML reads only the GPUs
of this host that the backend is told are its own; a remote backend has none, and its budget and
the sizes Ollama reports decide, so it is never managed on another machine's GPU. Backends whose
memory the same readings count (several Ollama servers on this host's GPUs) share one
``MemoryDomain``: their loads take turns under its lock, and an idle model of any of them may make
room, since each server alone sees only its own models and would fail its load with an
out-of-memory error. Each domain calibrates its own reserve.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ollama_asgi.catalog import BackendModels, ModelInfo
from ollama_asgi.errors import GatewayError

__all__ = ["BackendMemory", "DeviceMemory", "MemoryDomain", "NvmlSource", "VramGuard", "VramSource"]

logger = logging.getLogger("ollama_asgi.vram")

_MAX_RUNNER_OVERHEAD = 2 << 30  # a runner's own memory beyond its size_vram, at most (a leak is not a context)
_IDLE_POLL = 0.05  # how often a load waiting for a busy model to go idle looks again


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    index: int
    total: int
    used: int

    @property
    def free(self) -> int:
        return max(0, self.total - self.used)


class VramSource(Protocol):
    """Where memory readings come from: NVML on a GPU host, anything else in tests."""

    def read(self) -> Sequence[DeviceMemory]: ...


class NvmlSource:
    """Readings from NVIDIA's management library (``pip install 'ollama-asgi[nvml]'``)."""

    def __init__(self, devices: Sequence[int] | None = None) -> None:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        self._nvml = pynvml
        self._handles = [
            (i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in (devices if devices is not None else range(count))
        ]

    @classmethod
    def available(cls, devices: Sequence[int] | None = None) -> NvmlSource | None:
        """An NVML source, or None when the library or a GPU is missing (CPU hosts, CI)."""
        try:
            source = cls(devices)
        except Exception:
            return None
        return source if source._handles else None

    def read(self) -> list[DeviceMemory]:
        out = []
        for index, handle in self._handles:
            info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(DeviceMemory(index=index, total=int(info.total), used=int(info.used)))
        return out


class MemoryDomain:
    """Memory that loads draw on: this host's GPUs as one reader counts them, shared by every backend
    served from them, or a backend's own. Loads in one domain take turns (``load_lock``), as Ollama
    itself loads one at a time: a reading and the load it allows must not interleave with another."""

    __slots__ = ("calibrated", "load_lock", "overhead", "source")

    def __init__(self, source: VramSource | None = None) -> None:
        self.source = source  # None: nothing is read, budgets and Ollama's sizes decide
        self.load_lock = asyncio.Lock()
        self.calibrated: int | None = None  # memory held with nothing loaded, once measured here
        self.overhead = 0  # what each runner holds beyond its size_vram, as measured here


@dataclass(eq=False, slots=True)
class BackendMemory:
    """Where one backend's free memory is known from: the GPUs of its domain, else its budget."""

    models: BackendModels
    budget: int | None = None
    domain: MemoryDomain = field(default_factory=MemoryDomain)  # its own, unless it shares this host's GPUs

    @property
    def source(self) -> VramSource | None:
        return self.domain.source

    def readings(self) -> list[DeviceMemory]:
        source = self.domain.source
        return list(source.read()) if source is not None else []

    def free_bytes(self) -> int:
        accounted = sum(m.size_vram or m.size for m in self.models.loaded.values())
        budget = self.budget
        readings = self.readings()
        if readings:
            free = sum(d.free for d in readings)
            if budget is not None:
                free = min(free, budget - accounted)
            return free
        if budget is None:
            return 1 << 62  # this backend has no budget: anything fits
        return budget - accounted


class VramGuard:
    """Make room before a load by unloading idle models, least valuable first.

    It keeps nothing per backend: ``memory_of`` gives the ``BackendMemory`` a backend owns, and
    ``peers`` the backends of its memory domain (both set by whoever holds the backends).
    """

    def __init__(
        self,
        *,
        budget: int | None,
        margin: float,
        reserved: int,
        source: VramSource | None,
        unload: Callable[[BackendModels, str], object],
        settle: float = 10.0,
        max_loaded: int | None = None,
    ) -> None:
        self.max_loaded = max_loaded  # Ollama's OLLAMA_MAX_LOADED_MODELS, when known
        self.budget = budget
        self.margin = margin
        self.reserved = reserved  # memory no model accounts for: CUDA contexts, runner overhead
        self.host = MemoryDomain(source)  # the memory of backends this guard is not told of (a guard on its own)
        self._unload = unload
        self.settle = settle
        self.evictions = 0
        self.refusals = 0
        self.history: list[dict[str, object]] = []  # recent decisions, for the status page
        # The backends that share ``models``' memory, itself included; set by whoever knows them all.
        self.peers: Callable[[BackendModels], Sequence[BackendModels]] = lambda models: (models,)
        # The memory a backend owns, and every managed backend's; set by whoever holds the backends.
        self.memory_of: Callable[[BackendModels], BackendMemory] = self._unowned
        self.memories: Callable[[], Iterable[BackendMemory]] = tuple
        self._sizes: dict[tuple[str, int], int] = {}  # (model, num_ctx) -> size_vram when last seen loaded

    def _unowned(self, models: BackendModels) -> BackendMemory:
        return BackendMemory(models, self.budget, self.host)

    @property
    def active(self) -> bool:
        return (
            self.budget is not None
            or bool(self.max_loaded)
            or self.host.source is not None
            or any(m.budget or m.domain.source is not None for m in self.memories())
        )

    @property
    def source(self) -> VramSource | None:
        """Readings of this host's GPUs, if any backend is managed on them (what status reports)."""
        if self.host.source is not None:
            return self.host.source
        return next((m.domain.source for m in self.memories() if m.domain.source is not None), None)

    def reserved_for(self, models: BackendModels) -> int:
        """Memory of ``models``' GPUs that no model accounts for: configured, or as calibrated there."""
        domain = self.memory_of(models).domain
        if domain.source is None or domain.calibrated is None:
            return self.reserved
        return domain.calibrated

    def expected_size(self, models: BackendModels, info: ModelInfo, num_ctx: int) -> int:
        """What loading ``info`` will take: its ``size_vram`` at this context when it was last seen loaded
        (else the file's size plus the margin), and, where GPUs are read, its runner's own CUDA context."""
        seen = models.loaded.get(info.name)
        if seen is not None and seen.num_ctx == num_ctx and seen.size_vram:
            return seen.size_vram
        known = self._sizes.get((info.name, num_ctx))
        size = known if known is not None else int(info.size * (1.0 + self.margin))
        return size + self.memory_of(models).domain.overhead

    def observe(self, models: BackendModels) -> None:
        """Learn from what is loaded now: each model's ``size_vram``, and the memory each runner holds that
        ``/api/ps`` does not report (its CUDA context, about 0.5 GiB on an H100), read as what NVML counts
        used beyond the reserve and the loaded models, shared among their runners."""
        runners = [m for peer in self.peers(models) for m in peer.loaded.values()]
        for loaded in runners:
            if loaded.size_vram and loaded.num_ctx:
                self._sizes[(loaded.name, loaded.num_ctx)] = loaded.size_vram
        if len(self._sizes) > 1024:  # names come from clients: bounded
            del self._sizes[next(iter(self._sizes))]
        memory = self.memory_of(models)
        readings = memory.readings()
        if readings and runners:
            used = sum(d.used for d in readings)
            accounted = sum(m.size_vram or m.size for m in runners)
            extra = (used - accounted - self.reserved_for(models)) // len(runners)
            memory.domain.overhead = min(max(0, extra), _MAX_RUNNER_OVERHEAD)

    def readings(self) -> list[DeviceMemory]:
        """This host's GPUs that some backend is managed on (each once)."""
        domains = (self.host, *(m.domain for m in self.memories()))
        sources = {id(d.source): d.source for d in domains if d.source is not None}
        found: dict[int, DeviceMemory] = {}
        for source in sources.values():
            for device in source.read():
                found.setdefault(device.index, device)
        return [found[index] for index in sorted(found)]

    def calibrate(self, models: BackendModels) -> None:
        """With nothing loaded, whatever NVML counts as used belongs to no model (driver reservation,
        CUDA contexts): take it as the reserve when it is larger than the configured one."""
        domain = self.memory_of(models).domain
        source = domain.source
        if source is None or any(peer.loaded for peer in self.peers(models)):
            return
        used = sum(d.used for d in source.read())
        if used > self.reserved_for(models):
            logger.info(
                "GPU memory held with no model loaded on %s's GPUs: %s; counting it as reserved there",
                models.backend.name,
                _size(used),
            )
            domain.calibrated = used

    def free_bytes(self, models: BackendModels) -> int:
        return self.memory_of(models).free_bytes()

    def fragmentation(self, models: BackendModels) -> float | None:
        """Share of GPU memory used by nothing the loaded models account for (0 is clean)."""
        readings = self.memory_of(models).readings()
        if not readings:
            return None
        total = sum(d.total for d in readings)
        used = sum(d.used for d in readings)
        accounted = sum(m.size_vram for peer in self.peers(models) for m in peer.loaded.values())
        return max(0.0, (used - accounted - self.reserved_for(models)) / total) if total else None

    async def before_load(self, models: BackendModels, info: ModelInfo, num_ctx: int, *, patient: bool = True) -> None:
        """Make room for ``info``; ``patient=False`` (a pre-warm) is refused where a request would wait."""
        if not self.active:
            return
        self.calibrate(models)
        self.observe(models)
        need = self.expected_size(models, info, num_ctx)
        evicted: list[tuple[BackendModels, str]] = []
        freed: int | None = None  # free memory before the first eviction plus what each one releases
        # Ollama holds at most OLLAMA_MAX_LOADED_MODELS and evicts one on its own, busy or not: the
        # gateway picks the idle one first. When every one is busy, the load waits its turn, as it
        # would in Ollama's own queue; memory is not the question, so refusing would only turn a
        # short wait into an error (on a CPU server there is no memory reading at all).
        while self._crowded(models, info.name, evicted):
            own = [v for v in self._victims(models, exclude=info.name, shared=False) if v[:2] not in evicted]
            if own:
                owner, victim, released = own[0]
                freed = (self.free_bytes(models) if freed is None else freed) + released  # before NVML shows it
                await self._evict(owner, victim)
                evicted.append((owner, victim))
            elif patient:
                await asyncio.sleep(_IDLE_POLL)  # until a loaded model's requests are done
            else:
                self.refusals += 1
                raise GatewayError(
                    503,
                    f"'{info.name}' would pass Ollama's limit of {self.max_loaded} loaded models, "
                    f"and they are busy: {', '.join(self._busy(models, shared=False))}",
                    [(b"retry-after", str(max(1, math.ceil(self.settle))).encode())],
                    reason="models_busy",
                )
        free = self.free_bytes(models) if freed is None else freed
        victims = [v for v in self._victims(models, exclude=info.name) if v[:2] not in evicted]
        # Room that only busy models could give: evicting idle ones first would cost loads and still
        # not fit. A pre-warm gives up at once (a guess never waits for, nor evicts for, real work);
        # a request waits for the busy models to finish, as it would in Ollama's own queue.
        while free + sum(released for _, _, released in victims) < need and self._busy(models):
            if not patient:
                self.refusals += 1
                raise GatewayError(
                    503,
                    f"no room to pre-load '{info.name}' ({_size(need)} needed) while "
                    f"{', '.join(self._busy(models))} are busy",
                    [(b"retry-after", str(max(1, math.ceil(self.settle))).encode())],
                    reason="models_busy",
                )
            await asyncio.sleep(_IDLE_POLL)
            free = self.free_bytes(models) if freed is None else freed
            victims = [v for v in self._victims(models, exclude=info.name) if v[:2] not in evicted]
        while free < need and victims:
            owner, victim, released = victims.pop(0)
            await self._evict(owner, victim)
            evicted.append((owner, victim))
            free += released
        memory = self.memory_of(models)
        if evicted and memory.source is not None:
            await self._wait_for_memory(models, need)
            free = self.free_bytes(models)
        measured = memory.source is not None or memory.budget is not None
        seen = free if measured else None  # a CPU server measures nothing: no made-up figure on the status page
        gone = [name if owner is models else f"{owner.backend.name}/{name}" for owner, name in evicted]
        self.history.append({"time": time.time(), "load": info.name, "need": need, "free": seen, "evicted": gone})
        del self.history[:-50]
        if free < need:
            self.refusals += 1
            raise GatewayError(
                503,
                f"not enough GPU memory to load '{info.name}' ({_size(need)} needed, {_size(max(free, 0))} free); "
                f"the loaded models are busy: {', '.join(self._busy(models)) or 'none'}",
                [(b"retry-after", str(max(1, math.ceil(self.settle))).encode())],
            )

    def _crowded(self, models: BackendModels, loading: str, leaving: list[tuple[BackendModels, str]]) -> bool:
        """Loading another model now would take Ollama past its loaded-model limit (``leaving``: models
        already told to unload, which ``/api/ps`` may list for a moment more). The limit is per server."""
        if not self.max_loaded:
            return False
        gone = {name for owner, name in leaving if owner is models}
        return sum(1 for name in models.loaded if name != loading and name not in gone) >= self.max_loaded

    def _busy(self, models: BackendModels, *, shared: bool = True) -> list[str]:
        """Models with requests in flight, on ``models``' backend or (``shared``) any in its memory domain."""
        busy: list[str] = []
        for peer in self.peers(models) if shared else (models,):
            prefix = "" if peer is models else f"{peer.backend.name}/"
            busy.extend(prefix + n for n, c in peer.in_flight.items() if c > 0)
        return sorted(busy)

    def _victims(
        self, models: BackendModels, *, exclude: str, shared: bool = True
    ) -> list[tuple[BackendModels, str, int]]:
        """Idle loaded models, least valuable first: rarely and not recently used. With ``shared``, those
        of every backend in ``models``' memory domain, since any of them gives the memory back."""
        now = time.time()
        idle = [
            (peer, m)
            for peer in (self.peers(models) if shared else (models,))
            for m in peer.loaded.values()
            if not (peer is models and m.name == exclude) and peer.in_flight.get(m.name, 0) == 0
        ]

        def value(owner: BackendModels, name: str) -> float:
            usage = owner.usage.get(name)
            if usage is None:
                return 0.0
            age = now - usage.last_used
            return usage.score / (1.0 + age / 60.0)

        idle.sort(key=lambda item: (value(item[0], item[1].name), -(item[1].size_vram or item[1].size)))
        return [(owner, m.name, m.size_vram or m.size) for owner, m in idle]

    async def _evict(self, models: BackendModels, name: str) -> None:
        logger.info("evicting %s from %s to make room", name, models.backend.name)
        result = self._unload(models, name)
        if asyncio.iscoroutine(result):
            await result
        self.evictions += 1

    async def _wait_for_memory(self, models: BackendModels, need: int) -> None:
        # Ollama unloads asynchronously; NVML shows the memory back a moment later.
        deadline = time.monotonic() + self.settle
        while time.monotonic() < deadline:
            for peer in self.peers(models):
                await peer.refresh_ps()
            if self.free_bytes(models) >= need:
                return
            await asyncio.sleep(0.1)


def _size(size: int) -> str:
    """Bytes in the unit that keeps them readable: a 250 KB model is not "0.0 GiB"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
