"""A Starlette host app with its own login, as a team's existing service would have, with the
gateway mounted at ``/llm`` and GZip compression switched on (it must not hold back streams)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from ollama_asgi import OllamaGateway

USERS = {"alice": ("alice-password", False), "root": ("root-password", True)}


@dataclass
class HostUser(BaseUser):
    username: str
    is_staff: bool = False

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.username

    @property
    def identity(self) -> str:
        return self.username


class CookieAuth(AuthenticationBackend):
    def __init__(self, sessions: dict[str, str]) -> None:
        self.sessions = sessions

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        name = self.sessions.get(conn.cookies.get("session", ""))
        if name is None:
            return None
        staff = USERS[name][1]
        return AuthCredentials(["authenticated"]), HostUser(name, is_staff=staff)


def starlette_host(gateway: OllamaGateway) -> Starlette:
    sessions: dict[str, str] = {}

    async def login(request: Request) -> Response:
        data = await request.json()
        user = USERS.get(data.get("username", ""))
        if user is None or user[0] != data.get("password"):
            return JSONResponse({"error": "bad credentials"}, status_code=401)
        token = secrets.token_urlsafe(16)
        sessions[token] = data["username"]
        response = JSONResponse({"ok": True})
        response.set_cookie("session", token, httponly=True)
        return response

    return Starlette(
        routes=[Route("/login", login, methods=["POST"]), Mount("/llm", app=gateway)],
        middleware=[
            Middleware(GZipMiddleware, minimum_size=1),
            Middleware(AuthenticationMiddleware, backend=CookieAuth(sessions)),
        ],
        lifespan=gateway.lifespan,
    )
