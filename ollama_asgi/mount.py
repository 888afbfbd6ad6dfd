"""A segment-safe prefix dispatcher: the gateway at ``/llm``, everything else to another app.

Used by ``ollama-asgi serve`` and by hosts without a router of their own (Django's ``asgi.py``).
It builds spec-form scopes (``path`` whole, ``root_path`` extended by the prefix), compares whole
path segments so ``/llmx`` never matches ``/llm``, and answers lifespan itself because Django's
handler raises on it and mounted apps never receive it otherwise.
"""

from __future__ import annotations

import contextlib

from ollama_asgi.types import ASGIApp, Receive, Scope, Send

__all__ = ["PrefixDispatcher"]


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b'{"error":"404 page not found"}'
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class PrefixDispatcher:
    """Send requests under ``prefix`` to ``app`` and the rest to ``fallback``.

    Args:
        app: The app mounted at ``prefix`` (usually an ``OllamaGateway``).
        prefix: Mount point such as ``"/llm"``.
        fallback: The host app; None answers 404.
        forward_lifespan: Pass lifespan events to ``fallback`` (off for Django, which rejects them).
    """

    def __init__(
        self, app: ASGIApp, prefix: str = "/llm", fallback: ASGIApp | None = None, *, forward_lifespan: bool = False
    ) -> None:
        prefix = "/" + prefix.strip("/")
        if prefix == "/":
            raise ValueError("prefix must name a path segment, such as '/llm'")
        self.app = app
        self.prefix = prefix
        self.fallback = fallback or _not_found
        self.forward_lifespan = forward_lifespan and fallback is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        root: str = scope.get("root_path", "")
        path: str = scope["path"]
        rel = path[len(root) :] if root and path.startswith(root) else path
        if rel == self.prefix or rel.startswith(self.prefix + "/"):
            await self.app({**scope, "root_path": root + self.prefix}, receive, send)
        else:
            await self.fallback(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.forward_lifespan:
            await self.fallback(scope, receive, send)
            with contextlib.suppress(Exception):
                await _close(self.app)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _close(self.app)
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _close(app: object) -> None:
    aclose = getattr(app, "aclose", None)
    if aclose is not None:
        await aclose()
