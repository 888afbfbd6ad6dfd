"""The model-aware steps of an inference request: size the context, own keep_alive, load once.

``ModelLifecycle.prepare`` turns a parsed request into what is sent upstream (a native path and
body with an explicit ``num_ctx`` and the gateway's ``keep_alive``); ``ensure_loaded`` makes sure
the model is in memory with that context before the request takes a slot; ``begin``/``end``
track requests in flight per model, which the VRAM guard reads to never evict a busy model, and
feed the traffic model that pre-warms what comes next. What is kept of a backend (its catalog,
memory, load lock and traffic model) is the ``Backend``'s own: the lifecycle only holds the
backends, so one that is removed takes all of it along.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

import orjson

from ollama_asgi import anthropic_compat, openai_compat, responses_compat
from ollama_asgi.auth import Principal
from ollama_asgi.backend import Backend
from ollama_asgi.catalog import BackendModels, ModelInfo
from ollama_asgi.context import TokenCounter, choose_num_ctx, truncate_messages
from ollama_asgi.errors import GatewayError
from ollama_asgi.lifecycle import Loader, LoadLock, LoadState
from ollama_asgi.model_names import canonical_model
from ollama_asgi.options import NUMBER_TYPES, RUNNER_OPTIONS, parse_keep_alive
from ollama_asgi.protocol import MAX_JSON_DEPTH, ParsedRequest
from ollama_asgi.routing import EMBED_ROUTES, Route
from ollama_asgi.settings import Settings
from ollama_asgi.upstream import Upstream
from ollama_asgi.vram import BackendMemory, MemoryDomain, NvmlSource, VramGuard, VramSource

__all__ = ["ModelLifecycle", "Prepared"]

logger = logging.getLogger("ollama_asgi.lifecycle")

# Runner options a client may not set unless an admin (num_ctx is sized by the gateway instead).
_CLIENT_RUNNER_OPTIONS = RUNNER_OPTIONS - {"num_ctx"}
_NATIVE_PATHS = {
    "generate": "/api/generate",
    "chat": "/api/chat",
    "embed": "/api/embed",
    "embeddings": "/api/embeddings",
}


@dataclass(slots=True)
class Prepared:
    """What goes upstream for one inference request."""

    path: str
    body: bytes
    model: str  # as the client spelled it (Ollama echoes it back)
    info: ModelInfo
    models: BackendModels
    backend: Backend  # the backend it goes to, whose catalog ``models`` is
    num_ctx: int
    stream: bool
    openai_route: str | None = None  # set when a /v1 request is served through the native API
    include_usage: bool = False
    encoding_format: str | None = None
    truncated: int = 0
    cold: bool = False
    load_only: bool = False
    request: dict[str, Any] | None = None  # the client's body, for answers that echo it (Responses)
    principal: str = ""  # whose request: pre-warming learns each principal's own sequence


class ModelLifecycle:
    """The backends' models: the single-flight loader, the VRAM guard and pre-warming."""

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
        self.loader.warm_prompt = self._warm_prompt
        self.loader.runner_options = dict(settings.runner_options)
        # The guard and the loader ask each backend for its memory; servers on this host's GPUs share
        # one domain: their loads take turns and may evict each other's idle models.
        self.guard.memory_of = self._memory_of
        self.guard.memories = lambda: [b.memory for b in list(self._backends.values())]
        self.guard.peers = self._memory_peers
        self.loader.domain_lock = lambda models: self._memory_of(models).domain.load_lock
        self.tokens = TokenCounter(settings.tokenizers)
        self.context_choices: Counter[str] = Counter()  # "bucket", "sticky", "client", "cap"
        self.context_sizes: Counter[int] = Counter()
        self.reloads_avoided = 0
        self._poller: asyncio.Task[None] | None = None
        self._prewarming: set[asyncio.Task[None]] = set()
        # Requests for a model let through and not yet finished (admission's swap gate, when on): a
        # model they wait for is needed now, whatever the predictions say.
        self.wanted: Callable[[str, str], bool] = lambda backend, model: False
        self._caps: dict[str, tuple[ModelInfo, int]] = {}

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
        for task in (self._poller, *self._prewarming):
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

    def _cap(self, info: ModelInfo) -> int:
        """The largest ``num_ctx`` this gateway gives ``info`` (settings are frozen: computed once).

        Kept by name with the facts it was computed from: hashing a whole ``ModelInfo`` per
        request costs more than the lookup saves.
        """
        cached = self._caps.get(info.name)
        if cached is not None and cached[0] is info:
            return cached[1]
        cap = self._compute_cap(info)
        self._caps[info.name] = (info, cap)
        return cap

    def _compute_cap(self, info: ModelInfo) -> int:
        cap = min(info.context_length or self.settings.max_num_ctx, self.settings.max_num_ctx)
        for pattern, limit in self.settings.model_max_num_ctx:
            if fnmatchcase(info.name, pattern.lower()) or fnmatchcase(
                info.name.removesuffix(":latest"), pattern.lower()
            ):
                cap = min(cap, limit)
        return cap

    async def prepare(self, route: Route, parsed: ParsedRequest, principal: Principal, backend: Upstream) -> Prepared:
        """What goes upstream for this request; fetches the model's facts from Ollama the first time."""
        assert parsed.model is not None
        if route.openai:
            to_native(route.name, dict(parsed.body))  # a malformed body is a 400 before the model is looked up
        try:
            info = await self._backends[backend.name].models.model_info(parsed.model)
        except GatewayError as exc:
            if exc.status == 404 and route.name in EMBED_ROUTES:  # the embed handlers' own words
                raise GatewayError(404, f'model "{parsed.model}" not found, try pulling it first') from None
            raise
        return self.prepare_known(route, parsed, principal, backend, info)

    def prepare_now(
        self, route: Route, parsed: ParsedRequest, principal: Principal, backend: Upstream
    ) -> Prepared | None:
        """``prepare`` without a coroutine when the model's facts are known (every request but the first)."""
        assert parsed.model is not None
        info = self._backends[backend.name].models.info.get(canonical_model(parsed.model))
        return None if info is None else self.prepare_known(route, parsed, principal, backend, info)

    def prepare_known(
        self, route: Route, parsed: ParsedRequest, principal: Principal, backend: Upstream, info: ModelInfo
    ) -> Prepared:
        if self._poller is None or self._poller.done():
            self.start()
        settings = self.settings
        owner = self._backends[backend.name]
        models = owner.models
        body: dict[str, Any] = dict(parsed.body)
        assert parsed.model is not None
        name = route.name
        prepared_path = _NATIVE_PATHS.get(name, "")
        include_usage = False
        openai_route = None
        encoding = None
        if route.openai:
            openai_route = name
            encoding = body.get("encoding_format") if isinstance(body.get("encoding_format"), str) else None
            prepared_path, body, include_usage = to_native(name, body)
            if name == "anthropic_messages" and body.get("think") and "thinking" not in info.capabilities:
                # Ollama's /v1/messages drops thinking for a model without it (Claude Code asks for it).
                del body["think"]

        client_keep_alive = body.get("keep_alive")
        load_only = _is_load_request(name, body)
        if load_only and client_keep_alive is not None and parse_keep_alive(client_keep_alive) == 0:
            if not principal.is_admin:
                raise GatewayError(403, "unloading models is restricted to administrators")
            return Prepared(prepared_path, _dumps(body), parsed.model, info, models, owner, 0, False, load_only=True)
        if client_keep_alive is None or not principal.is_admin:
            body["keep_alive"] = settings.keep_alive  # the gateway owns model lifetimes

        options = body.get("options")
        options = dict(options) if isinstance(options, dict) else {}
        if not principal.is_admin:
            # Ollama reloads the model for everyone when these differ from the loaded runner's.
            if options and not _CLIENT_RUNNER_OPTIONS.isdisjoint(options):
                for option in _CLIENT_RUNNER_OPTIONS:
                    options.pop(option, None)
            body.pop("shift", None)
        for option, value in settings.runner_options:
            options.setdefault(option, value)
        cap = self._cap(info)
        requested = options.get("num_ctx") if settings.honour_client_num_ctx else None
        num_predict = options.get("num_predict")
        num_predict = int(num_predict) if isinstance(num_predict, NUMBER_TYPES) else -1
        if num_predict == -2:  # "fill the context"
            num_predict = -1
        answer = num_predict if num_predict > 0 else settings.num_predict_reserve
        if info.embedding_only or name in EMBED_ROUTES:
            answer = 0
        prompt_tokens = self.tokens.count(body, info.name)
        truncated = 0
        if prompt_tokens + min(answer, 16) > cap and settings.context_overflow == "truncate":
            truncated = truncate_messages(body, cap - min(answer, cap // 4), self.tokens.text_for(info.name))
            prompt_tokens = self.tokens.count(body, info.name)
        loaded = models.loaded_with(info.name)
        loaded_ctx = loaded.num_ctx if loaded is not None and loaded.num_ctx else None
        choice = choose_num_ctx(
            prompt_tokens=prompt_tokens,
            num_predict=answer if answer > 0 else 1,
            buckets=settings.num_ctx_buckets,
            cap=cap,
            loaded=loaded_ctx,
            requested=int(requested) if isinstance(requested, NUMBER_TYPES) else None,
            reserve=settings.num_predict_reserve,
        )
        # Ollama raises a smaller one to its floor and reports that: asking for less would never
        # find the model loaded, and every request would send the load again.
        num_ctx = max(choice.num_ctx, 2048 if "vision" in info.capabilities else 4)
        self.context_choices[choice.reason] += 1
        self.context_sizes[num_ctx] += 1
        if choice.reason == "sticky":
            for bucket in settings.num_ctx_buckets:
                if bucket >= choice.needed:
                    if bucket != num_ctx:
                        self.reloads_avoided += 1
                    break
        options["num_ctx"] = num_ctx
        body["options"] = options
        # Cold: this request finds its model neither loaded nor already on its way in.
        key = (backend.name, info.name)
        cold = (loaded is None or (loaded_ctx is not None and loaded_ctx != num_ctx)) and key not in self.loader.loading
        owner.num_ctx[info.name] = num_ctx
        # Seen on arrival, not once served: a request waiting for its load or slot is already its
        # principal's latest, which is what the next load's choice of victim must know.
        owner.traffic.observe(info.name, cold=cold, principal=principal.id)
        return Prepared(
            prepared_path,
            _dumps(body),
            parsed.model,
            info,
            models,
            owner,
            num_ctx,
            parsed.stream if route.openai else bool(body.get("stream", route.stream_default)),
            openai_route,
            include_usage,
            encoding,
            truncated,
            cold,
            load_only,
            parsed.body if route.openai else None,
            principal.id,
        )

    def is_ready(self, prepared: Prepared) -> bool:
        """Loaded with the chosen ``num_ctx`` already: nothing to wait for (the common case, checked
        without a coroutine)."""
        return not prepared.num_ctx or self.loader.ready(prepared.models, prepared.info, prepared.num_ctx)

    async def ensure_loaded(self, prepared: Prepared, *, wait_limit: float) -> None:
        if prepared.num_ctx:
            if self.settings.prewarm:
                await self._give_way(prepared.backend, prepared.info, prepared.num_ctx)
            await self.loader.ensure_loaded(prepared.models, prepared.info, prepared.num_ctx, wait_limit=wait_limit)

    def begin(self, prepared: Prepared) -> None:
        models = prepared.models
        name = prepared.info.name
        in_flight = models.in_flight
        in_flight[name] = in_flight.get(name, 0) + 1  # not ``+= 1``: a Counter's __missing__ is Python
        models.touch(name, time.time())
        if self.settings.prewarm:
            self._maybe_prewarm(prepared.backend, name, prepared.principal)

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
                self._maybe_prewarm(prepared.backend, name, prepared.principal)

    # -- pre-warming: free memory and an idle loader only, and it gives way to real requests ----------

    def _maybe_prewarm(self, owner: Backend, current: str, principal: str) -> None:
        traffic = owner.traffic
        prediction = traffic.predict(current, principal)
        if prediction is None or prediction.model == current:
            return
        target = prediction.model
        models, backend = owner.models, owner.name
        if models.loaded_with(target) is not None or any(b == backend for b, _ in self.loader.loading):
            return  # loaded already, or the loader is busy: a guess never queues beside real loads
        info = models.info.get(target)
        if info is not None and self._no_room(models, info, owner.num_ctx.get(target, 0)):
            return
        traffic.issued += 1
        traffic.warmed.add(target)
        task = asyncio.ensure_future(self._prewarm(owner, target))
        self._prewarming.add(task)
        task.add_done_callback(self._prewarming.discard)

    async def _prewarm(self, owner: Backend, model: str) -> None:
        models, traffic = owner.models, owner.traffic
        try:
            info = await models.model_info(model)
            num_ctx = owner.num_ctx.get(info.name) or self._default_bucket(info)
            await self.loader.ensure_loaded(models, info, num_ctx, wait_limit=self.settings.load_timeout, patient=False)
            logger.info("pre-warmed %s on %s", model, models.backend.name)
        except GatewayError as exc:
            traffic.warmed.discard(model)
            logger.info("pre-warming %s skipped: %s", model, exc.message)

    def _no_room(self, models: BackendModels, info: ModelInfo, num_ctx: int) -> str | None:
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

    async def _before_load(self, models: BackendModels, info: ModelInfo, num_ctx: int, *, patient: bool) -> None:
        """The VRAM guard, with a pre-warm refused where it would evict or a real load waits for the loader."""
        if not patient:
            backend = models.backend.name
            waiting = any(b == backend and m != info.name and s.patient for (b, m), s in self.loader.loading.items())
            why = "a request waits for the loader" if waiting else self._no_room(models, info, num_ctx)
            if why is not None:
                # ``models_busy``: a request that joined this pre-warm loads with a turn of its own.
                raise GatewayError(503, f"pre-warming '{info.name}' gave way: {why}", reason="models_busy")
        elif self.settings.prewarm and self._memory_of(models).source is None:
            await self._evict_furthest(models, info, num_ctx)
        await self.guard.before_load(models, info, num_ctx, patient=patient)

    async def _evict_furthest(self, models: BackendModels, info: ModelInfo, num_ctx: int) -> None:
        """Make a request's room as Bélády would: the idle model the principals' predicted sequences
        need furthest ahead (or not at all) goes first. Where the predictions cannot tell the idle
        models apart, the VRAM guard chooses as it always does. (With NVML readings freed memory
        shows late, so there the guard alone evicts.)"""
        backend = models.backend.name
        owner = self._owner(models)
        uses: dict[str, float] | None = None
        while owner is not None and self._no_room(models, info, num_ctx) is not None:
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

    async def _give_way(self, owner: Backend, info: ModelInfo, num_ctx: int) -> None:
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
        while self._no_room(models, info, num_ctx):
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

    def _default_bucket(self, info: ModelInfo) -> int:
        cap = self._cap(info)
        wanted = self.settings.default_num_ctx
        return next((b for b in self.settings.num_ctx_buckets if b >= wanted and b <= cap), min(wanted, cap))

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


def _last_used(models: BackendModels, name: str) -> float:
    usage = models.usage.get(name)
    return usage.last_used if usage is not None else 0.0


def to_native(route: str, req: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """The native path and body for a request under ``/v1``, whichever API family it speaks."""
    if route == "anthropic_messages":
        return anthropic_compat.to_native(req)
    if route == "openai_responses":
        return responses_compat.to_native(req)
    return openai_compat.to_native(route, req)


def _on_this_host(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _dumps(body: dict[str, Any]) -> bytes:
    """The upstream body; what the client nested too deep to write (tool arguments sent as JSON text
    under ``/v1``) is the client's 400."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise GatewayError(400, f"request body nests JSON deeper than {MAX_JSON_DEPTH} levels") from exc


def _is_load_request(route: str, body: dict[str, Any]) -> bool:
    if route == "generate":
        return not body.get("prompt")
    if route == "chat":
        return not body.get("messages")
    if route == "embed":
        return not body.get("input")
    if route == "embeddings":
        return not body.get("prompt")
    return False
