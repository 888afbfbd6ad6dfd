"""The ``asgi.py`` path's authentication step: the Django session user, read-only, plus CSRF.

The request never reaches Django's middleware here, so this step does what its session and
authentication middleware would: load the session named by the cookie and resolve the user with
``aget_user``. As Django's ASGI handler does, it runs each request in its own
``ThreadSensitiveContext`` (ORM calls of one request share one thread) and closes stale database
connections before and after (Django does that on ``request_started``/``request_finished``,
signals this path never sends). Sessions are only read; nothing is written back.
"""

from __future__ import annotations

import io
from importlib import import_module
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings  # type: ignore[import-untyped]
from django.core.handlers.asgi import ASGIRequest  # type: ignore[import-untyped]
from django.db import close_old_connections  # type: ignore[import-untyped]

from ollama_asgi.contrib.csrf import csrf_refusal
from ollama_asgi.contrib.django.csrf import csrf_failure, needs_csrf_check
from ollama_asgi.types import ASGIApp, Receive, Scope, Send

try:
    from django.contrib.auth import aget_user  # type: ignore[import-untyped]
except ImportError:  # Django 4.2
    from django.contrib.auth import get_user

    aget_user = sync_to_async(get_user)

__all__ = ["DjangoSessionAuth", "session_user"]


async def session_user(request: Any) -> Any:
    """The user that ``request``'s session cookie names, or ``AnonymousUser``."""
    engine = import_module(settings.SESSION_ENGINE)
    request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    return await aget_user(request)


class DjangoSessionAuth:
    """ASGI middleware: ``scope["user"]`` from the Django session, and Django's CSRF check for it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        async with ThreadSensitiveContext():
            await sync_to_async(close_old_connections)()
            try:
                # Headers, cookies and META as Django sees them; the body stays in `receive`.
                request = ASGIRequest(scope, io.BytesIO())
                user = await session_user(request)
                if needs_csrf_check(scope, user):
                    reason = await sync_to_async(csrf_failure)(request)
                    if reason is not None:
                        await csrf_refusal(scope, send, reason)
                        return
                await self.app({**scope, "user": user}, receive, send)
            finally:
                await sync_to_async(close_old_connections)()

    async def aclose(self) -> None:
        aclose = getattr(self.app, "aclose", None)
        if aclose is not None:
            await aclose()
