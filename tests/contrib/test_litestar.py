"""The Litestar plugin: spec-form scopes, guards, opting out of auth, lifespan, configuration errors."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult, DefineMiddleware

from ollama_asgi import ConfigError, Principal, Settings
from ollama_asgi.contrib.litestar import OllamaGatewayPlugin, to_spec_scope
from ollama_asgi.routing import route_path
from ollama_asgi.testing import EmulatorServer
from tests.hosts.shared import API_KEY, shared_emulator
from tests.support.server import ServerThread

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def settings() -> Settings:
    return Settings.from_mapping({"upstreams": (shared_emulator().url,), "api_keys": (f"ci={API_KEY}",)})


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/api/chat/", "", ("/llm", "/llm/api/chat", "/api/chat")),
        ("/", "", ("/llm", "/llm", "/")),
        ("/v1/models/llama3.2:latest/", "/svc", ("/svc/llm", "/svc/llm/v1/models/llama3.2:latest", None)),
    ],
)
def test_litestar_mount_scopes_are_put_back_in_spec_form(path: str, root: str, expected: tuple[Any, ...]) -> None:
    spec = to_spec_scope({"type": "http", "path": path, "root_path": root}, "/llm")
    assert (spec["root_path"], spec["path"]) == expected[:2]
    if expected[2] is not None:
        assert route_path(spec) == expected[2]


def test_the_mount_works_behind_a_proxy_with_a_root_path(settings: Settings) -> None:
    app = Litestar(plugins=[OllamaGatewayPlugin(settings)])

    async def behind_proxy(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":  # what uvicorn --root-path /svc hands the app
            scope = {**scope, "root_path": "/svc", "path": "/svc" + scope["path"]}
        await app(scope, receive, send)

    with ServerThread(behind_proxy) as server:
        response = httpx.get(server.url + "/llm/api/tags", headers=AUTH)
        assert response.status_code == 200 and response.json()["models"]


def test_guards_run_before_the_gateway(settings: Settings, emulator: EmulatorServer) -> None:
    def office_hours(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        raise NotAuthorizedException("closed")

    before = sum(1 for r in emulator.emulator.requests if r.path == "/api/tags")
    app = Litestar(plugins=[OllamaGatewayPlugin(settings, guards=[office_hours])])
    with ServerThread(app) as server:
        assert httpx.get(server.url + "/llm/api/tags", headers=AUTH).status_code == 401
    assert sum(1 for r in emulator.emulator.requests if r.path == "/api/tags") == before


async def test_an_async_user_to_principal_is_awaited(settings: Settings) -> None:
    async def to_principal(user: str) -> Principal:
        return Principal(id=user, models=("qwen2.5*",))

    plugin = OllamaGatewayPlugin(settings, user_to_principal=to_principal)
    principal = await plugin.gateway._authorize({"type": "http", "headers": [], "user": "svc-account"})  # type: ignore[misc]
    assert principal == Principal(id="svc-account", models=("qwen2.5*",))


def test_excluded_from_auth_the_mount_serves_api_keys_past_a_strict_auth_middleware(settings: Settings) -> None:
    class SessionRequired(AbstractAuthenticationMiddleware):
        async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
            raise NotAuthorizedException("sign in first")

    for exclude, status in ((False, 401), (True, 200)):
        app = Litestar(
            middleware=[DefineMiddleware(SessionRequired)],
            plugins=[OllamaGatewayPlugin(settings, exclude_from_auth=exclude)],
        )
        with ServerThread(app) as server:
            assert httpx.get(server.url + "/llm/api/tags", headers=AUTH).status_code == status


def test_the_plugin_closes_the_gateway_at_shutdown(settings: Settings) -> None:
    plugin = OllamaGatewayPlugin(settings)
    closed: list[bool] = []
    close = plugin.gateway.aclose

    async def aclose() -> None:
        closed.append(True)
        await close()

    plugin.gateway.aclose = aclose  # type: ignore[method-assign]
    with ServerThread(Litestar(plugins=[plugin])) as server:
        assert httpx.get(server.url + "/llm/").text == "Ollama is running"
    assert closed == [True]


def test_a_bad_environment_setting_raises_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_ASGI_PARALLEL", "many")
    with pytest.raises(ConfigError) as info:
        OllamaGatewayPlugin()
    assert info.value.field == "parallel" and "'parallel'" in str(info.value)


def test_an_unknown_environment_setting_is_named_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_ASGI_MAX_QUEUED", "3")
    with pytest.raises(ConfigError, match="OLLAMA_ASGI_MAX_QUEUE"):
        OllamaGatewayPlugin()


@pytest.mark.parametrize("path", ["llm", "/", ""])
def test_a_bad_mount_path_raises_config_error(settings: Settings, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        OllamaGatewayPlugin(settings, path=path)
    assert info.value.field == "path"
