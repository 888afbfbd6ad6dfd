"""The plan stage: what an inference request becomes upstream, once its backend and model are known.

A request under ``/v1`` is translated to Ollama's native API; the gateway's ``keep_alive`` takes
the client's place (the gateway owns model lifetimes); runner options a client may not set are
taken out, since Ollama reloads a model for everyone when they differ from its runner's; and an
explicit ``num_ctx`` is sized to the prompt and the answer (truncating the conversation where
configured), so that a model loads once at a size that fits and stays loaded. Planning runs for
every request and never awaits: only a model's facts, fetched from Ollama the first time, do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import orjson

from ollama_asgi import anthropic_compat, openai_compat, responses_compat
from ollama_asgi.auth import Principal
from ollama_asgi.backend import Backend
from ollama_asgi.catalog import BackendModels, ModelInfo
from ollama_asgi.context import TokenCounter, choose_num_ctx, truncate_messages
from ollama_asgi.errors import GatewayError
from ollama_asgi.lifecycle import LoadState
from ollama_asgi.options import NUMBER_TYPES, RUNNER_OPTIONS, parse_keep_alive
from ollama_asgi.protocol import MAX_JSON_DEPTH, ParsedRequest
from ollama_asgi.routing import EMBED_ROUTES, Route
from ollama_asgi.settings import Settings
from ollama_asgi.upstream import Upstream

__all__ = ["Planner", "Prepared", "to_native"]

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


class Planner:
    """Plans each request for the backends in service, and counts the context sizes it chose."""

    def __init__(
        self, settings: Settings, backends: dict[str, Backend], loading: dict[tuple[str, str], LoadState]
    ) -> None:
        self.settings = settings
        self._backends = backends  # the lifecycle's: backends added or removed are seen here
        self._loading = loading  # the loader's loads under way: a request joining one is not cold
        self.tokens = TokenCounter(settings.tokenizers)
        self.context_choices: Counter[str] = Counter()  # "bucket", "sticky", "client", "cap"
        self.context_sizes: Counter[int] = Counter()
        self.reloads_avoided = 0
        self._caps: dict[str, tuple[ModelInfo, int]] = {}

    def cap(self, info: ModelInfo) -> int:
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

    def default_bucket(self, info: ModelInfo) -> int:
        """The ``num_ctx`` to load ``info`` with when no request has sized it yet (a pre-warm)."""
        cap = self.cap(info)
        wanted = self.settings.default_num_ctx
        return next((b for b in self.settings.num_ctx_buckets if b >= wanted and b <= cap), min(wanted, cap))

    async def model_info(self, route: Route, parsed: ParsedRequest, backend: Upstream) -> ModelInfo:
        """The model's facts, fetched from Ollama the first time; a malformed ``/v1`` body is a 400
        before the model is looked up."""
        assert parsed.model is not None
        if route.openai:
            to_native(route.name, dict(parsed.body))
        try:
            return await self._backends[backend.name].models.model_info(parsed.model)
        except GatewayError as exc:
            if exc.status == 404 and route.name in EMBED_ROUTES:  # the embed handlers' own words
                raise GatewayError(404, f'model "{parsed.model}" not found, try pulling it first') from None
            raise

    def prepare(
        self, route: Route, parsed: ParsedRequest, principal: Principal, backend: Upstream, info: ModelInfo
    ) -> Prepared:
        """What goes upstream for this request, ``info`` being its model's facts."""
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
        cap = self.cap(info)
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
        cold = (loaded is None or (loaded_ctx is not None and loaded_ctx != num_ctx)) and key not in self._loading
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


def to_native(route: str, req: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """The native path and body for a request under ``/v1``, whichever API family it speaks."""
    if route == "anthropic_messages":
        return anthropic_compat.to_native(req)
    if route == "openai_responses":
        return responses_compat.to_native(req)
    return openai_compat.to_native(route, req)


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
