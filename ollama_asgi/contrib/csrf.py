"""CSRF protection for hosts that have none (Starlette, FastAPI): a double-submit token check.

A browser sends the host's session cookie on cross-site requests too, and Ollama reads any body
as JSON, so a form on another site could start GPU work in a logged-in user's name. Requests
authenticated by the host (no ``Authorization: Bearer`` key) with an unsafe method must therefore
repeat the CSRF cookie's value in a header, which another site cannot read. Key-authenticated
clients and anonymous requests pass straight through: the first cannot be forged from a browser,
the second get the gateway's 401.
"""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie

from ollama_asgi.contrib.principals import uses_host_session
from ollama_asgi.errors import error_body
from ollama_asgi.routing import route_path
from ollama_asgi.types import ASGIApp, Receive, Scope, Send

__all__ = ["SAFE_METHODS", "CSRFMiddleware", "csrf_refusal"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


def _cookie(scope: Scope, name: str) -> str:
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(_header(scope, b"cookie"))
    except Exception:  # a malformed Cookie header carries no usable token
        return ""
    morsel = cookies.get(name)
    return morsel.value if morsel is not None else ""


async def csrf_refusal(scope: Scope, send: Send, reason: str) -> None:
    """Answer 403 in the error shape of the API the request was made to (Ollama or OpenAI)."""
    body = error_body(403, f"CSRF check failed: {reason}", openai=route_path(scope).startswith("/v1/"))
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class CSRFMiddleware:
    """Require ``header_name`` to equal the ``cookie_name`` cookie on host-authenticated unsafe requests.

    Args:
        app: The app to protect, usually the ``OllamaGateway``.
        cookie_name: The cookie the host sets at login with a random token (readable by its pages).
        header_name: The header the host's pages copy the token into.
    """

    def __init__(self, app: ASGIApp, *, cookie_name: str = "csrftoken", header_name: str = "x-csrftoken") -> None:
        self.app = app
        self.cookie_name = cookie_name
        self.header_name = header_name.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS or not uses_host_session(scope):
            await self.app(scope, receive, send)
            return
        expected = _cookie(scope, self.cookie_name)
        given = _header(scope, self.header_name)
        if not expected:
            await csrf_refusal(scope, send, "CSRF cookie not set.")
        elif not given:
            await csrf_refusal(scope, send, "CSRF token missing.")
        elif not hmac.compare_digest(expected.encode(), given.encode()):
            await csrf_refusal(scope, send, "CSRF token incorrect.")
        else:
            await self.app(scope, receive, send)

    async def aclose(self) -> None:
        aclose = getattr(self.app, "aclose", None)
        if aclose is not None:
            await aclose()
