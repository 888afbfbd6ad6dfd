"""The route table (``GenerateRoutes``) and gin's answers when no route matches."""

from __future__ import annotations

from dataclasses import dataclass

from ollama_asgi.testing import management, native, openai_compat
from ollama_asgi.testing.handler import Handler
from ollama_asgi.testing.responses import Responder

__all__ = ["PARAM_ROUTES", "ROUTES", "Match", "Route", "match", "no_route"]


@dataclass(frozen=True)
class Route:
    handler: Handler
    openai: bool = False
    """Errors take the OpenAI shape."""
    inference: bool = False
    """A client leaving counts as a cancellation."""


def _native(handler: Handler) -> Route:
    return Route(handler, inference=True)


def _openai(handler: Handler, inference: bool = True) -> Route:
    return Route(handler, openai=True, inference=inference)


ROUTES: dict[str, dict[str, Route]] = {
    "/": {"GET": Route(management.root), "HEAD": Route(management.root)},
    "/api/version": {"GET": Route(management.version), "HEAD": Route(management.version)},
    "/api/tags": {"GET": Route(management.tags), "HEAD": Route(management.tags)},
    "/api/ps": {"GET": Route(management.ps)},
    "/api/generate": {"POST": _native(native.generate)},
    "/api/chat": {"POST": _native(native.chat)},
    "/api/embed": {"POST": _native(native.embed)},
    "/api/embeddings": {"POST": _native(native.embeddings)},
    "/api/show": {"POST": Route(management.show)},
    "/api/copy": {"POST": Route(management.copy)},
    "/api/delete": {"DELETE": Route(management.delete)},
    "/api/pull": {"POST": Route(management.pull)},
    "/api/push": {"POST": Route(management.push)},
    "/api/create": {"POST": Route(management.create)},
    "/v1/chat/completions": {"POST": _openai(openai_compat.chat_completions)},
    "/v1/completions": {"POST": _openai(openai_compat.completions)},
    "/v1/embeddings": {"POST": _openai(openai_compat.embeddings)},
    "/v1/models": {"GET": _openai(openai_compat.models, inference=False)},
}
PARAM_ROUTES: tuple[tuple[str, str, dict[str, Route]], ...] = (
    ("/api/blobs/", "digest", {"HEAD": Route(management.head_blob), "POST": Route(management.create_blob)}),
    ("/v1/models/", "model", {"GET": _openai(openai_compat.model, inference=False)}),
)

Match = tuple[dict[str, Route], dict[str, str]]


def match(path: str) -> Match | None:
    """The methods served at ``path`` and its parameters (``:digest``, ``:model``: one segment)."""
    if path in ROUTES:
        return ROUTES[path], {}
    for prefix, param, methods in PARAM_ROUTES:
        rest = path[len(prefix) :]
        if path.startswith(prefix) and rest and "/" not in rest:
            return methods, {param: rest}
    return None


async def no_route(method: str, path: str, found: Match | None, responder: Responder) -> None:
    """gin: trailing-slash redirect, then 405 with ``Allow``, then 404 (plain-text bodies)."""
    other = path[:-1] if path.endswith("/") and len(path) > 1 else path + "/"
    alternative = match(other)
    if alternative is not None and method in alternative[0]:
        status = 301 if method == "GET" else 307
        text = "Moved Permanently" if status == 301 else "Temporary Redirect"
        body = f'<a href="{other}">{text}</a>.\n\n'.encode() if method == "GET" else b""
        await responder.send(status, body, "text/html; charset=utf-8" if body else None, [("location", other)])
    elif found is not None:
        allow = ", ".join(sorted(found[0]))
        await responder.send(405, b"405 method not allowed", "text/plain", headers=[("allow", allow)])
    else:
        await responder.send(404, b"404 page not found", "text/plain")
