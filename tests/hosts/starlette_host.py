"""Starlette: its own cookie login, ``AuthenticationMiddleware``, the gateway on a plain ``Mount``
wrapped in the contrib CSRF check, and the app's user objects mapped by a ``user_to_principal``."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from ollama_asgi import OllamaGateway, Principal, Settings
from ollama_asgi.contrib.starlette import CSRFMiddleware, UserAuthorizer
from tests.hosts.base import Host, Session, cookie_value
from tests.hosts.shared import ADMIN_KEY, API_KEY, PASSWORD
from tests.support.server import ServerThread


@dataclass
class AppUser(BaseUser):
    username: str
    roles: tuple[str, ...]

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.username


USERS = {
    "alice": AppUser("alice", ("chat", "chat-small")),
    "bob": AppUser("bob", ("chat-small",)),
    "root": AppUser("root", ("ops",)),
}
ROLE_MODELS = {"chat": ("llama3.2*",), "chat-small": ("qwen2.5*",)}


def to_principal(user: AppUser) -> Principal:
    """How this app's roles translate into what the gateway enforces."""
    if "ops" in user.roles:
        return Principal(id=user.username, is_admin=True)
    models = tuple(p for role in user.roles for p in ROLE_MODELS.get(role, ()))
    return Principal(id=user.username, display_name=user.username, models=models)


class CookieSessions(AuthenticationBackend):
    def __init__(self) -> None:
        self.sessions: dict[str, str] = {}

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        name = self.sessions.get(conn.cookies.get("session", ""))
        return None if name is None else (AuthCredentials(["authenticated"]), USERS[name])


def create_app(upstream: str) -> Starlette:
    settings = Settings.from_mapping(
        dict(upstreams=(upstream,), api_keys=(f"ci={API_KEY}",), admin_api_keys=(f"ops={ADMIN_KEY}",))
    )
    gateway = OllamaGateway(settings, authorize=UserAuthorizer(settings, to_principal))
    backend = CookieSessions()

    async def login(request: Request) -> Response:
        data = await request.json()
        name = data.get("username", "")
        if name not in USERS or data.get("password") != PASSWORD.format(name):
            return JSONResponse({"error": "bad credentials"}, status_code=401)
        token = secrets.token_urlsafe(16)
        backend.sessions[token] = name
        response = JSONResponse({"ok": True})
        response.set_cookie("session", token, httponly=True, samesite="lax")
        response.set_cookie("csrftoken", secrets.token_urlsafe(24), samesite="lax")
        return response

    return Starlette(
        routes=[Route("/login", login, methods=["POST"]), Mount("/llm", app=CSRFMiddleware(gateway))],
        middleware=[Middleware(AuthenticationMiddleware, backend=backend)],
        lifespan=gateway.lifespan,
    )


def start(upstream: str) -> tuple[Host, ServerThread]:
    server = ServerThread(create_app(upstream)).start()

    def sign_in(username: str) -> Session:
        response = httpx.post(server.url + "/login", json={"username": username, "password": PASSWORD.format(username)})
        response.raise_for_status()
        return Session(response.cookies, cookie_value(response.cookies, "csrftoken"))

    return Host("starlette", server.url, sign_in, stop=server.stop), server
