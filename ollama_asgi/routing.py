"""The route table: which Ollama and OpenAI-compatible paths exist, and what each one is.

Matching is exact on the path relative to the mount point, so ``..``, ``//``, case tricks and
encoded slashes never reach a route they do not spell: an unknown path is a 404, full stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ollama_asgi.types import Scope

__all__ = ["Kind", "Route", "match_route", "route_path"]


class Kind(Enum):
    PUBLIC = "public"  # answered without authentication, like Ollama's liveness probe
    READ = "read"  # listing and metadata; authenticated
    INFERENCE = "inference"  # runs a model; authenticated, model policy applies
    MANAGE = "manage"  # changes the model store; admins only
    GATEWAY = "gateway"  # the gateway's own endpoints


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    methods: frozenset[str]
    kind: Kind
    openai: bool = False
    stream_default: bool | None = None  # None: the endpoint never streams
    model_keys: tuple[str, ...] = ()  # body keys naming the model, in lookup order
    model_required: bool = False
    json_body: bool = False  # POST/DELETE with a JSON object body
    streamed_body: bool = False  # request body piped through unbuffered (blob uploads)
    account: bool = False  # acts as the Ollama server's ollama.com account: off unless cloud_account_routes


# Embedding routes: their requests take the embedding slots (``embed_parallel``) and produce no
# answer tokens, so their context needs no room for one.
EMBED_ROUTES = frozenset({"embed", "embeddings", "openai_embeddings"})


def _r(name: str, methods: str, kind: Kind, **kw: object) -> Route:
    return Route(name, frozenset(methods.split()), kind, **kw)  # type: ignore[arg-type]


_GEN = {"model_keys": ("model",), "model_required": True, "json_body": True}
_NAMED = {"model_keys": ("model", "name"), "model_required": True, "json_body": True}

ROUTES: dict[str, Route] = {
    "/": _r("root", "GET HEAD", Kind.PUBLIC),
    "/api/version": _r("version", "GET HEAD", Kind.READ),
    "/api/generate": _r("generate", "POST", Kind.INFERENCE, stream_default=True, **_GEN),
    "/api/chat": _r("chat", "POST", Kind.INFERENCE, stream_default=True, **_GEN),
    "/api/embed": _r("embed", "POST", Kind.INFERENCE, **_GEN),
    "/api/embeddings": _r("embeddings", "POST", Kind.INFERENCE, **_GEN),
    "/api/status": _r("cloud_status", "GET", Kind.READ),  # Ollama's {"cloud": {"disabled", "source"}}
    # They act as the server's ollama.com account (web search and fetch are billed to it): admins
    # only, and only where the cloud_account_routes setting allows them.
    "/api/me": _r("me", "POST", Kind.MANAGE, account=True),
    "/api/signout": _r("signout", "POST", Kind.MANAGE, account=True),
    "/api/experimental/web_search": _r("web_search", "POST", Kind.MANAGE, account=True),
    "/api/experimental/web_fetch": _r("web_fetch", "POST", Kind.MANAGE, account=True),
    "/api/tags": _r("tags", "GET HEAD", Kind.READ),
    "/api/ps": _r("ps", "GET", Kind.READ),
    "/api/show": _r("show", "POST", Kind.READ, **_NAMED),
    "/api/pull": _r("pull", "POST", Kind.MANAGE, stream_default=True, **_NAMED),
    "/api/push": _r("push", "POST", Kind.MANAGE, stream_default=True, **_NAMED),
    "/api/create": _r("create", "POST", Kind.MANAGE, stream_default=True, **_NAMED),
    "/api/copy": _r("copy", "POST", Kind.MANAGE, json_body=True),
    "/api/delete": _r("delete", "DELETE", Kind.MANAGE, **_NAMED),
    "/v1/chat/completions": _r("openai_chat", "POST", Kind.INFERENCE, openai=True, stream_default=False, **_GEN),
    "/v1/completions": _r("openai_completions", "POST", Kind.INFERENCE, openai=True, stream_default=False, **_GEN),
    "/v1/embeddings": _r("openai_embeddings", "POST", Kind.INFERENCE, openai=True, **_GEN),
    # Anthropic's Messages API and OpenAI's Responses API, served through /api/chat like /v1 chat.
    "/v1/messages": _r("anthropic_messages", "POST", Kind.INFERENCE, openai=True, stream_default=False, **_GEN),
    "/v1/responses": _r("openai_responses", "POST", Kind.INFERENCE, openai=True, stream_default=False, **_GEN),
    "/v1/models": _r("openai_models", "GET", Kind.READ, openai=True),
    "/_gateway/health": _r("health", "GET HEAD", Kind.GATEWAY),
    "/_gateway/status": _r("status", "GET HEAD", Kind.GATEWAY),
    "/_gateway/metrics": _r("metrics", "GET HEAD", Kind.GATEWAY),
}
_BLOBS = _r("blobs", "HEAD POST", Kind.MANAGE, streamed_body=True)
_BACKENDS = _r("backends", "GET POST DELETE", Kind.GATEWAY)
_QUEUE = _r("queue", "GET", Kind.GATEWAY)  # /_gateway/queue/{request_id}: where a waiting request stands
_MODEL = _r("openai_model", "GET", Kind.READ, openai=True)
_USER_KEY = _r("user_keys", "DELETE", Kind.MANAGE, account=True)  # /api/user/keys/{key}: Ollama's older signout


def route_path(scope: Scope) -> str:
    """The path below the mount point: ``path`` minus ``root_path`` at a segment boundary, no trailing ``/``.

    ASGI's ``path`` is the full path and ``root_path`` the mount prefix (Starlette's Mount keeps
    ``path`` whole). A host that already stripped the prefix leaves a path that does not start with
    ``root_path``; it is used as it is.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "").rstrip("/")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :]
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path or "/"


def match_route(path: str) -> Route | None:
    route = ROUTES.get(path)
    if route is not None:
        return route
    if path.startswith("/api/blobs/") and _single_segment(path[11:]):
        return _BLOBS
    if path.startswith("/api/user/keys/") and _single_segment(path[15:]):
        return _USER_KEY
    if path == "/_gateway/backends" or (path.startswith("/_gateway/backends/") and _backend_path(path[19:])):
        return _BACKENDS
    if path.startswith("/_gateway/queue/") and _single_segment(path[16:]):
        return _QUEUE
    if path.startswith("/v1/models/") and path[11:] and ".." not in path[11:].split("/"):
        return _MODEL
    return None


def _backend_path(rest: str) -> bool:
    """``NAME`` or ``NAME/drain`` or ``NAME/undrain`` under ``/_gateway/backends/``."""
    name, _, action = rest.partition("/")
    return _single_segment(name) and action in ("", "drain", "undrain")


def _single_segment(rest: str) -> bool:
    return bool(rest) and "/" not in rest and rest not in (".", "..")
