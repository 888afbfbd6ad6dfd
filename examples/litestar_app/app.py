"""The host app: sessions, its own authentication middleware, CSRF, and the gateway via the plugin."""

from __future__ import annotations

import secrets
from typing import Any

from litestar import Litestar, Request, get, post
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.enums import MediaType
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult, DefineMiddleware
from litestar.middleware.session.server_side import ServerSideSessionConfig
from litestar.response import Redirect, Response
from litestar.template.base import csrf_token

from examples.litestar_app.accounts import ACCOUNTS, Account, check_credentials
from examples.litestar_app.pages import chat_page, login_page
from ollama_asgi import Principal, Settings
from ollama_asgi.contrib.litestar import OllamaGatewayPlugin

__all__ = ["DEMO_API_KEY", "GATEWAY_PREFIX", "create_app", "demo_settings"]

GATEWAY_PREFIX = "/llm"
DEMO_API_KEY = "demo-api-key-123"


def demo_settings(upstream: str) -> Settings:
    """One Ollama, this app's users, and one API key for curl and scripts."""
    return Settings.from_mapping({"upstreams": upstream, "api_keys": [f"demo-key={DEMO_API_KEY}"]})


class SessionAuthentication(AbstractAuthenticationMiddleware):
    """``scope["user"]`` is the signed-in ``Account``, or None: API-key clients have no session,
    and the gateway answers anonymous requests with 401 itself."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        session = connection.scope.get("session")
        name = session.get("user") if isinstance(session, dict) else None
        return AuthenticationResult(user=ACCOUNTS.get(name or ""), auth=None)


def to_principal(account: Account) -> Principal:
    """What the gateway enforces for one of this app's users."""
    return Principal(
        id=account.username, display_name=account.display_name, is_admin=account.is_staff, models=account.models
    )


def _html(body: str, status_code: int = 200) -> Response[str]:
    return Response(body, media_type=MediaType.HTML, status_code=status_code)


@get("/", sync_to_thread=False)
def home(request: Request[Account | None, Any, Any]) -> Response[str] | Redirect:
    if request.user is None:
        return Redirect("/login")
    page = chat_page(
        request.user.display_name,
        is_staff=request.user.is_staff,
        api=GATEWAY_PREFIX,
        csrf_token=csrf_token({"request": request}),
    )
    return _html(page)


@get("/login", sync_to_thread=False)
def login_form(request: Request[Any, Any, Any]) -> Response[str]:
    return _html(login_page(csrf_token({"request": request})))


@post("/login")
async def login(request: Request[Any, Any, Any]) -> Response[str] | Redirect:
    form = await request.form()
    account = check_credentials(str(form.get("username", "")), str(form.get("password", "")))
    if account is None:
        return _html(login_page(csrf_token({"request": request}), "Invalid username or password."), 401)
    request.set_session({"user": account.username})
    return Redirect("/")


@post("/logout", sync_to_thread=False)
def logout(request: Request[Any, Any, Any]) -> Redirect:
    request.clear_session()
    return Redirect("/login")


def create_app(settings: Settings) -> Litestar:
    """The host app with the gateway at ``/llm``, behind its sessions, authentication and CSRF."""
    sessions = ServerSideSessionConfig()  # the app's memory store; use Redis or a database in production
    return Litestar(
        route_handlers=[home, login_form, login, logout],
        middleware=[sessions.middleware, DefineMiddleware(SessionAuthentication)],
        # A fresh secret per start: CSRF tokens and sessions end with the process, as in any demo.
        csrf_config=CSRFConfig(secret=secrets.token_hex(16)),
        plugins=[OllamaGatewayPlugin(settings, path=GATEWAY_PREFIX, user_to_principal=to_principal)],
    )
