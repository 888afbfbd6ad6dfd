"""Litestar: cookie sessions, an authentication middleware of the app's own, ``CSRFConfig``, and
the gateway mounted by ``OllamaGatewayPlugin`` with the default user mapping."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import httpx
from litestar import Litestar, Request, get, post
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult, DefineMiddleware
from litestar.middleware.session.server_side import ServerSideSessionConfig

from ollama_asgi import Settings
from ollama_asgi.contrib.litestar import OllamaGatewayPlugin
from tests.hosts.base import Host, Session, cookie_value
from tests.hosts.shared import ADMIN_KEY, API_KEY, PASSWORD
from tests.support.server import ServerThread


@dataclass
class Account:
    username: str
    is_staff: bool = False
    ollama_models: tuple[str, ...] | None = None


ACCOUNTS = {
    "alice": Account("alice", ollama_models=("llama3.2*", "qwen2.5*")),
    "bob": Account("bob", ollama_models=("qwen2.5*",)),
    "root": Account("root", is_staff=True),
}


class SessionAuthentication(AbstractAuthenticationMiddleware):
    """The signed-in account, or no user at all (API-key clients have no session)."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        session = connection.scope.get("session") or {}
        account = ACCOUNTS.get(session.get("user", "")) if isinstance(session, dict) else None
        return AuthenticationResult(user=account, auth=None)


@post("/login", opt={"exclude_from_csrf": True})
async def login(request: Request[Any, Any, Any], data: dict[str, str]) -> dict[str, bool]:
    name = data.get("username", "")
    if name not in ACCOUNTS or data.get("password") != PASSWORD.format(name):
        raise NotAuthorizedException("bad credentials")
    request.set_session({"user": name})
    return {"ok": True}


@get("/me")
async def me(request: Request[Any, Any, Any]) -> dict[str, str | None]:
    return {"user": request.user.username if request.user else None}


def create_app(upstream: str) -> Litestar:
    settings = Settings.from_mapping(
        dict(upstreams=(upstream,), api_keys=(f"ci={API_KEY}",), admin_api_keys=(f"ops={ADMIN_KEY}",))
    )
    sessions = ServerSideSessionConfig()  # kept in the app's memory store
    return Litestar(
        route_handlers=[login, me],
        middleware=[sessions.middleware, DefineMiddleware(SessionAuthentication)],
        csrf_config=CSRFConfig(secret=secrets.token_hex(16)),
        plugins=[OllamaGatewayPlugin(settings, path="/llm")],
    )


def start(upstream: str) -> tuple[Host, ServerThread]:
    server = ServerThread(create_app(upstream)).start()

    def sign_in(username: str) -> Session:
        with httpx.Client(base_url=server.url) as client:
            client.post("/login", json={"username": username, "password": PASSWORD.format(username)}).raise_for_status()
            client.get("/me").raise_for_status()  # a safe request: Litestar's CSRF middleware sets the cookie
            return Session(httpx.Cookies(client.cookies), cookie_value(client.cookies, "csrftoken"))

    return Host("litestar", server.url, sign_in, stop=server.stop), server
