"""Django's own CSRF check, run only where a browser could be tricked into sending the request.

The gateway is an API: machine clients authenticate with ``Authorization: Bearer`` keys and send
no cookies, so they are not asked for a token. A request that carries the session cookie of a
signed-in user is different, whatever else it carries: a form on another site could start GPU work (or a
model pull) in the user's name. Like Django REST framework, the view is ``csrf_exempt`` and
``CsrfViewMiddleware`` is run here on session-authenticated unsafe requests only, with its usual
settings (``CSRF_COOKIE_NAME``, ``CSRF_HEADER_NAME``, ``CSRF_TRUSTED_ORIGINS``).
"""

from __future__ import annotations

from typing import Any

from django.middleware.csrf import CsrfViewMiddleware  # type: ignore[import-untyped]

from ollama_asgi.contrib.principals import uses_host_session
from ollama_asgi.types import Scope

__all__ = ["csrf_failure", "needs_csrf_check"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class _CSRFCheck(CsrfViewMiddleware):  # type: ignore[misc]
    def _reject(self, request: Any, reason: str) -> str:
        return reason  # report the reason instead of answering with Django's HTML 403 page


def _no_response(request: Any) -> None:
    return None


def needs_csrf_check(scope: Scope, user: Any) -> bool:
    """An unsafe request that a browser could have sent with the user's session cookie."""
    return scope["method"] not in _SAFE_METHODS and uses_host_session(scope, user)


def csrf_failure(request: Any) -> str | None:
    """Why Django's CSRF check refuses ``request``, or None when it passes (sync: may read the session)."""
    check = _CSRFCheck(_no_response)
    check.process_request(request)
    reason: str | None = check.process_view(request, None, (), {})
    return reason
