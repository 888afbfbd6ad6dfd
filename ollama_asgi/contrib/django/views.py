"""The URLconf bridge: an async view that hands ``llm/<path>`` to the gateway.

Everything the project's middleware did applies: the user is the ``request.user`` that a
middleware of the project set (a token middleware, say), else ``request.auser()``, the user
whichever authentication backend logged in; the view passes it on in ``scope["user"]``. The child
scope is in ASGI spec form (``path`` whole, ``root_path`` = script name + the URLconf prefix), so
the gateway finds its own routes wherever the project includes it.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpResponse  # type: ignore[import-untyped]
from django.utils.functional import LazyObject  # type: ignore[import-untyped]

from ollama_asgi.contrib.django import conf
from ollama_asgi.contrib.django.bridge import call_asgi
from ollama_asgi.contrib.django.csrf import csrf_failure, needs_csrf_check
from ollama_asgi.errors import error_body

__all__ = ["gateway_view"]

logger = logging.getLogger("ollama_asgi")

_NEEDS_ASGI = (
    "the ollama_asgi view needs an ASGI server (uvicorn, daphne, hypercorn); "
    "under WSGI, including the default runserver, its streams cannot flow"
)


def _error(status: int, message: str, *, openai: bool) -> Any:
    body = error_body(status, message, openai=openai)
    return HttpResponse(body, status=status, content_type="application/json; charset=utf-8")


async def _user(request: Any) -> Any:
    explicit = request.__dict__.get("user")
    if explicit is not None and not isinstance(explicit, LazyObject):
        return explicit  # set by the project's own middleware (a token middleware, say): it decides
    auser = getattr(request, "auser", None)
    if auser is not None:
        return await auser()
    if hasattr(request, "user"):  # Django 4.2: a lazy object that must be evaluated in a thread

        def evaluate() -> Any:
            user = request.user
            user.is_authenticated  # noqa: B018 - forces the lazy object
            return user

        return await sync_to_async(evaluate)()
    from django.contrib.auth.models import AnonymousUser  # type: ignore[import-untyped]

    return AnonymousUser()


async def gateway_view(request: Any, path: str = "", **kwargs: Any) -> Any:
    """Serve ``path`` (the part of the URL below the include) from the gateway."""
    scope = getattr(request, "scope", None)
    openai = path.startswith("v1/")
    if scope is None:
        logger.error(_NEEDS_ASGI)
        return _error(500, _NEEDS_ASGI, openai=openai)
    user = await _user(request)
    if needs_csrf_check(scope, user):
        reason = await sync_to_async(csrf_failure)(request)
        if reason is not None:
            return _error(403, f"CSRF check failed: {reason}", openai=openai)
    script_name = request.META.get("SCRIPT_NAME", "").rstrip("/")
    path_info: str = request.path_info
    prefix = path_info[: len(path_info) - len(path)].rstrip("/")
    child = {**scope, "path": script_name + path_info, "root_path": script_name + prefix, "user": user}
    return await call_asgi(conf.gateway(), child, request)


# Django's CSRF middleware skips the view (the attribute csrf_exempt sets; the decorator itself
# only wraps async views from Django 5.0 on); the check above runs for sessions only.
gateway_view.csrf_exempt = True  # type: ignore[attr-defined]
