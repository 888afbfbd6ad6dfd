"""The mount handler: Litestar's scope back into ASGI spec form, and CSRF for host sessions only.

Litestar hands a mounted app ``path`` = the rest of the path with a ``/`` appended and leaves
``root_path`` alone, so the gateway could not tell ``/llm/api/chat`` from ``/api/chat``. The
handler rebuilds the spec form (``path`` whole, ``root_path`` + mount path) before the core sees it.

The app-wide ``CSRFConfig`` would ask API-key clients for a CSRF cookie they never have, so the
mount opts out of it and runs Litestar's own ``CSRFMiddleware`` (same cookie, header and secret)
on unsafe requests that the host's session authenticates, the only ones a browser can forge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, cast

from litestar.config.csrf import CSRFConfig
from litestar.handlers import ASGIRouteHandler, asgi
from litestar.middleware.csrf import CSRFMiddleware
from litestar.types import Guard

from ollama_asgi.contrib.csrf import SAFE_METHODS
from ollama_asgi.contrib.principals import uses_host_session
from ollama_asgi.types import ASGIApp, Receive, Scope, Send

__all__ = ["mount_handler", "to_spec_scope"]

# An opt key no handler sets: the mount's own CSRF check must not skip itself.
_NEVER_EXCLUDED = "ollama_asgi_csrf_never_excluded"


def to_spec_scope(scope: Scope, mount_path: str) -> Scope:
    """``scope`` with ``path`` whole again and ``root_path`` extended by ``mount_path``."""
    rest: str = scope["path"]
    rest = rest.rstrip("/")  # Litestar appended "/" to the remainder; Ollama's paths never end in one
    root = scope.get("root_path", "").rstrip("/") + mount_path
    return {**scope, "root_path": root, "path": root + rest}


def mount_handler(
    app: ASGIApp,
    path: str,
    *,
    csrf_config: CSRFConfig | None = None,
    guards: Sequence[Guard] | None = None,
    opt: Mapping[str, Any] | None = None,
) -> ASGIRouteHandler:
    """An ``asgi(path, is_mount=True, copy_scope=True)`` handler that calls ``app`` in spec form."""
    options = dict(opt or {})
    session_csrf: ASGIApp | None = None
    if csrf_config is not None:
        options[csrf_config.exclude_from_csrf_key] = True
        own = dataclasses.replace(csrf_config, exclude_from_csrf_key=_NEVER_EXCLUDED)
        # Litestar types scopes as TypedDicts; the middleware is a plain ASGI app either way.
        session_csrf = cast("ASGIApp", CSRFMiddleware(cast("Any", app), own))

    async def ollama_gateway(scope: Scope, receive: Receive, send: Send) -> None:
        spec = to_spec_scope(scope, path)
        if session_csrf is not None and spec["method"] not in SAFE_METHODS and uses_host_session(spec):
            await session_csrf(spec, receive, send)
        else:
            await app(spec, receive, send)

    return asgi(path, is_mount=True, copy_scope=True, guards=guards, opt=options, name="ollama_asgi")(ollama_gateway)
