"""What the gateway knows about each backend's models: their limits, and what is loaded now.

Model facts (context length, capabilities, size) come from ``/api/show`` and ``/api/tags`` and
change rarely, so they are cached until a pull, create, copy or delete through the gateway changes
the model store (``forget``). What is loaded comes from ``/api/ps``, refreshed after every
load the gateway makes and polled in the background, so decisions about ``num_ctx`` and loads
are made against what Ollama really holds.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from ollama_asgi.errors import GatewayError
from ollama_asgi.model_names import canonical_model
from ollama_asgi.upstream import Upstream, UpstreamError

__all__ = ["BackendModels", "Loaded", "ModelInfo"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    context_length: int | None
    capabilities: tuple[str, ...]
    size: int  # bytes on disk, the best estimate of what a load costs before KV cache

    @property
    def embedding_only(self) -> bool:
        return "embedding" in self.capabilities and "completion" not in self.capabilities


@dataclass(slots=True)
class Loaded:
    name: str
    num_ctx: int
    size: int
    size_vram: int
    expires_at: float  # unix time; inf when pinned


@dataclass(slots=True)
class _Usage:
    last_used: float = 0.0
    score: float = 0.0  # exponentially decayed request count: the "frequency" in LRU-by-frequency

    def touch(self, now: float, half_life: float = 600.0) -> None:
        if self.last_used:
            self.score *= 0.5 ** ((now - self.last_used) / half_life)
        self.score += 1.0
        self.last_used = now


@dataclass(slots=True)
class BackendModels:
    """Per-backend model knowledge; one instance per upstream."""

    backend: Upstream
    info: dict[str, ModelInfo] = field(default_factory=dict)
    loaded: dict[str, Loaded] = field(default_factory=dict)
    in_flight: Counter[str] = field(default_factory=Counter)
    usage: dict[str, _Usage] = field(default_factory=dict)
    ps_refreshed: float = 0.0
    _sizes: dict[str, int] = field(default_factory=dict)
    _pending: dict[str, asyncio.Future[ModelInfo]] = field(default_factory=dict)
    _generation: int = 0  # bumped by ``forget``: a fetch begun before it does not fill the cache

    def forget(self, model: str) -> None:
        """The store changed ``model`` (pulled, created, copied over or deleted): its facts are read again."""
        name = canonical_model(model)
        self.info.pop(name, None)
        self._pending.pop(name, None)
        self._sizes.clear()  # sizes come from one /api/tags listing, read again with the next fetch
        self._generation += 1

    async def model_info(self, model: str) -> ModelInfo:
        """``/api/show`` facts for ``model``, fetched once (concurrent callers share the fetch)."""
        name = canonical_model(model)
        known = self.info.get(name)
        if known is not None:
            return known
        pending = self._pending.get(name)
        if pending is None:
            pending = self._pending[name] = asyncio.ensure_future(self._fetch_info(model, name))
            pending.add_done_callback(partial(self._fetched, name))
        return await asyncio.shield(pending)

    def _fetched(self, name: str, fetch: asyncio.Future[ModelInfo]) -> None:
        if self._pending.get(name) is fetch:  # not one that ``forget`` let go of
            del self._pending[name]

    async def _fetch_info(self, model: str, name: str) -> ModelInfo:
        generation = self._generation
        status, body = await self.backend.call_json("POST", "/api/show", {"model": model})
        if status != 200 or not isinstance(body, dict):
            message = body.get("error") if isinstance(body, dict) else None
            raise GatewayError(status if 400 <= status < 600 else 502, str(message or f"model '{model}' not found"))
        context = None
        model_info = body.get("model_info")
        if isinstance(model_info, dict):
            for key, value in model_info.items():
                if key.endswith(".context_length") and isinstance(value, int):
                    context = value
                    break
        caps = body.get("capabilities")
        capabilities = tuple(c for c in caps if isinstance(c, str)) if isinstance(caps, list) else ("completion",)
        size = await self._size_of(name)
        info = ModelInfo(name=name, context_length=context, capabilities=capabilities, size=size)
        if generation == self._generation:
            self.info[name] = info
        return info

    async def _size_of(self, name: str) -> int:
        if name not in self._sizes:
            try:
                status, body = await self.backend.call_json("GET", "/api/tags")
            except UpstreamError:
                return 0
            if status == 200 and isinstance(body, dict):
                for entry in body.get("models") or []:
                    if isinstance(entry, dict) and isinstance(entry.get("size"), int):
                        self._sizes[canonical_model(str(entry.get("model") or entry.get("name")))] = entry["size"]
        return self._sizes.get(name, 0)

    async def refresh_ps(self) -> None:
        """Replace the loaded table with Ollama's ``/api/ps``; keep the old one if Ollama is away."""
        try:
            status, body = await self.backend.call_json("GET", "/api/ps", within=5.0)
        except UpstreamError:
            return
        if status != 200 or not isinstance(body, dict):
            return
        loaded: dict[str, Loaded] = {}
        for entry in body.get("models") or []:
            if not isinstance(entry, dict):
                continue
            name = canonical_model(str(entry.get("model") or entry.get("name") or ""))
            loaded[name] = Loaded(
                name=name,
                num_ctx=int(entry.get("context_length") or 0),
                size=int(entry.get("size") or 0),
                size_vram=int(entry.get("size_vram") or 0),
                expires_at=_parse_time(entry.get("expires_at")),
            )
        self.loaded = loaded
        self.ps_refreshed = time.monotonic()

    def loaded_with(self, model: str, *, margin: float = 2.0) -> Loaded | None:
        """The loaded runner of ``model`` if it will not expire within ``margin`` seconds."""
        entry = self.loaded.get(model)  # callers mostly hold the canonical name already
        if entry is None:
            entry = self.loaded.get(canonical_model(model))
        if entry is None or entry.expires_at < time.time() + margin:
            return None
        return entry

    def touch(self, model: str, now: float | None = None) -> None:
        """One more request for ``model`` (``now``: ``time.time()``, when the caller has read it)."""
        usage = self.usage.get(model)
        if usage is None:
            name = canonical_model(model)
            usage = self.usage.get(name)
            if usage is None:
                usage = self.usage[name] = _Usage()
        usage.touch(time.time() if now is None else now)


def _parse_time(value: object) -> float:
    if not isinstance(value, str) or not value:
        return float("inf")
    text = value.replace("Z", "+00:00")
    if "." in text:  # Go writes nanoseconds; Python takes microseconds
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return float("inf")
