"""Several Ollama backends: where each request goes, which backends are healthy, and draining.

Each model has a stable home chosen by rendezvous (highest-random-weight) hashing of the model
name over the healthy backends that have room for it, so every worker and replica picks the same
home without talking and a model is loaded once, not on every backend. A request goes to a
backend that already has its model loaded and a free slot first; a hot model whose queue wait
passes ``spill_wait`` spills to its next-ranked backend, and shrinks back once it cools.

Health is active (jittered ``GET /`` probes) and passive (connect errors, timeouts and 5xx
answers); a circuit breaker per backend opens after ``breaker_failures`` consecutive failures,
lets one probe through after ``breaker_cooldown`` (half-open) and closes on success, so a dead
backend is not hammered. Draining a backend stops new requests while in-flight ones finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import time
from dataclasses import dataclass, field

from ollama_asgi.admission import Admission
from ollama_asgi.affinity import Conversation, ConversationAffinity
from ollama_asgi.backend import Backend
from ollama_asgi.errors import GatewayError
from ollama_asgi.inference import ModelLifecycle
from ollama_asgi.model_names import canonical_model

__all__ = ["Backend", "Placement"]

logger = logging.getLogger("ollama_asgi.placement")
_rng = random.Random()  # a private generator: the host's global random state is not ours to advance


@dataclass(slots=True)
class _Spill:
    backends: list[str]
    hot_since: float
    cool_since: float | None = None


@dataclass(slots=True)
class Placement:
    """Choose backends, track their health, run the breakers."""

    backends: list[Backend]
    failures_to_open: int = 3
    cooldown: float = 5.0
    max_cooldown: float = 60.0
    spill_wait: float = 10.0
    health_interval: float = 5.0
    admission: Admission | None = None  # slots and queues: where a request would start at once
    lifecycle: ModelLifecycle | None = None  # loads under way and the memory guard (None: relay only)
    strategy: str = "affinity"  # "round_robin" and "random" exist for comparison in benchmarks
    conversations: ConversationAffinity | None = None  # a conversation's turns go where its cache is
    spills: dict[str, _Spill] = field(default_factory=dict)
    _checker: asyncio.Task[None] | None = None
    _checked: asyncio.Event | None = None  # set once every backend has been probed once
    _turn: int = 0

    # -- choosing ---------------------------------------------------------------------------------

    def by_name(self, name: str) -> Backend | None:
        return next((b for b in self.backends if b.name == name), None)

    def ranking(self, model: str, candidates: list[Backend]) -> list[Backend]:
        """Backends ordered by rendezvous score for ``model``: the first is its home."""
        if len(candidates) < 2:
            return list(candidates)  # one backend is every model's home: skip the hashing
        key = canonical_model(model).encode()

        def score(backend: Backend) -> float:
            digest = hashlib.blake2b(key + b"\0" + backend.name.encode(), digest_size=8).digest()
            unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
            return -backend.spec.weight / math.log(unit)

        return sorted(candidates, key=score, reverse=True)

    def choose(
        self, model: str | None, *, exclude: frozenset[str] = frozenset(), conversation: Conversation | None = None
    ) -> Backend:
        now = time.monotonic()
        if len(self.backends) == 1 and not exclude and self.backends[0].available(now):
            return self.backends[0]  # the common single-backend deployment: nothing to weigh
        candidates = [b for b in self.backends if b.name not in exclude and b.available(now)]
        if not candidates:
            raise GatewayError(
                503, "no Ollama backend is available right now", [(b"retry-after", str(self._retry_after()).encode())]
            )
        if model is None:
            return min(candidates, key=lambda b: self.expected_wait(b, ""))
        if self.strategy == "round_robin":
            self._turn += 1
            return candidates[self._turn % len(candidates)]
        if self.strategy == "random":
            return _rng.choice(candidates)
        name = canonical_model(model)
        fitting = [b for b in candidates if self.fits(b, name)] or candidates
        ranked = self.ranking(name, fitting)
        self._update_spill(name, ranked)

        def wait(backend: Backend) -> float:
            return self.expected_wait(backend, name)

        loaded = [b for b in ranked if self.loaded_on(b, name)]
        ready = [b for b in loaded if self.has_room(b, name)]
        if conversation is not None and self.conversations is not None:
            kept = self.conversations.choose(conversation, loaded, ready, wait)
            if kept is not None:
                return kept
        if ready:  # loaded with a free slot: start at once
            return min(ready, key=wait)
        copies = 1 + len(self._spilled_to(name))
        if loaded and len(loaded) >= copies:  # queue where it is loaded rather than load another copy
            return min(loaded, key=wait)
        # Load it: on the best-ranked backend with memory to spare, else on its home (evicting idle models).
        unloaded = [b for b in ranked if b not in loaded]
        roomy = [b for b in unloaded if self.memory_for(b, name)]
        return (roomy or unloaded or ranked)[0]

    # -- what a backend offers a model now: read from the admission and the lifecycle ----------------

    def expected_wait(self, backend: Backend, model: str) -> float:
        """Seconds a request for ``model`` would wait for a slot on ``backend`` (0: one is free)."""
        if self.admission is None:
            return 0.0
        pool = self.admission.pool(backend.slots, "generate", model)
        if pool.has_room():
            return 0.0
        return pool.expected_wait(pool.waiting)

    def has_room(self, backend: Backend, model: str) -> bool:
        return self.admission is None or self.admission.has_room(backend.slots, model)

    def loaded_on(self, backend: Backend, model: str) -> bool:
        """Loaded there, or being loaded there (a cold burst follows its first request)."""
        if self.lifecycle is None:
            return False
        return (
            backend.models.loaded_with(model) is not None
            or (backend.name, canonical_model(model)) in self.lifecycle.loader.loading
        )

    def fits(self, backend: Backend, model: str) -> bool:
        """``model`` is no larger than ``backend``'s memory budget (unknown sizes count as yes)."""
        if self.lifecycle is None:
            return True
        budget = backend.memory.budget
        info = backend.models.info.get(model)
        return budget is None or info is None or info.size <= budget

    def memory_for(self, backend: Backend, model: str) -> bool:
        """``backend`` can load ``model`` without evicting anything (unknown sizes count as yes)."""
        if self.lifecycle is None or not self.lifecycle.guard.active:
            return True
        name = canonical_model(model)
        info = next((b.models.info[name] for b in self.backends if name in b.models.info), None)
        if info is None:
            return True
        return backend.memory.free_bytes() >= self.lifecycle.guard.expected_size(backend.models, info, 0)

    def _spilled_to(self, model: str) -> list[str]:
        spill = self.spills.get(model)
        return spill.backends if spill is not None else []

    def _update_spill(self, model: str, ranked: list[Backend]) -> None:
        if len(ranked) < 2:
            return
        now = time.monotonic()
        home = ranked[0].name
        wait = self.expected_wait(ranked[0], model)
        spill = self.spills.get(model)
        if wait > self.spill_wait:
            if spill is None:
                self.spills[model] = _Spill([ranked[1].name], now)
                logger.info("model %s is hot on %s (%.1fs wait): spilling to %s", model, home, wait, ranked[1].name)
            else:
                spill.cool_since = None
        elif spill is not None and wait < self.spill_wait / 2:
            if spill.cool_since is None:
                spill.cool_since = now
            elif now - spill.cool_since > max(30.0, self.spill_wait * 3):
                del self.spills[model]
                logger.info("model %s cooled down: back to %s only", model, home)

    def _retry_after(self) -> int:
        now = time.monotonic()
        waits = [b.cooldown - (now - b.opened_at) for b in self.backends if b.breaker == "open" and not b.draining]
        return max(1, math.ceil(min(waits))) if waits else max(1, math.ceil(self.health_interval))

    # -- health -------------------------------------------------------------------------------------

    def record_success(self, backend: Backend) -> None:
        backend.failures = 0
        backend.last_ok = time.monotonic()
        backend.last_error = None
        if backend.breaker != "closed":
            logger.warning("backend %s is healthy again: breaker closed", backend.name)
        backend.breaker = "closed"
        backend.cooldown = 0.0

    def record_failure(self, backend: Backend, error: str) -> None:
        backend.failures += 1
        backend.last_error = error
        if backend.breaker == "half-open" or (
            backend.breaker == "closed" and backend.failures >= self.failures_to_open
        ):
            backend.cooldown = min(self.max_cooldown, backend.cooldown * 2 if backend.cooldown else self.cooldown)
            backend.breaker = "open"
            backend.opened_at = time.monotonic()
            backend.opens += 1
            logger.error("backend %s failing (%s): breaker open for %.0fs", backend.name, error, backend.cooldown)

    def start(self) -> None:
        if self._checker is None or self._checker.done():
            self._checked = asyncio.Event()
            self._checker = asyncio.ensure_future(self._check_forever())

    async def checked(self, within: float) -> None:
        """Start the probes and wait, up to ``within``, until each backend has been probed once.

        Only a gateway's first moments wait here; from then on health is read from what the probes
        and requests recorded, so however often it is asked, Ollama sees one probe per interval.
        """
        self.start()
        assert self._checked is not None
        if not self._checked.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._checked.wait()

    async def _check_forever(self) -> None:
        while True:
            # Open breakers are probed as soon as their cooldown ends; the rest on the jittered interval.
            await asyncio.gather(*(self.check(b) for b in list(self.backends)))
            if self._checked is not None:
                self._checked.set()
            pause = self.health_interval * _rng.uniform(0.8, 1.2)
            now = time.monotonic()
            for b in self.backends:
                if b.breaker == "open":
                    pause = min(pause, max(0.05, b.cooldown - (now - b.opened_at)))
            await asyncio.sleep(pause)

    async def check(self, backend: Backend) -> bool:
        """One active probe; once an open breaker's cooldown is over, this is its half-open probe."""
        now = time.monotonic()
        if backend.breaker == "open":
            if now - backend.opened_at < backend.cooldown:
                return False
            backend.breaker = "half-open"
        ok = await backend.upstream.probe(within=min(2.0, self.health_interval))
        if ok:
            self.record_success(backend)
        else:
            self.record_failure(backend, "health check failed")
        return ok

    def forget(self, name: str) -> None:
        """A backend left for good: no model spills to it any more."""
        for model, spill in list(self.spills.items()):
            if name in spill.backends:
                spill.backends.remove(name)
                if not spill.backends:
                    del self.spills[model]

    async def aclose(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
