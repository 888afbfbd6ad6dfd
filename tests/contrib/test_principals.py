"""Host user objects of any shape become principals; CSRF is asked only of cookie sessions."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from ollama_asgi import Principal, Settings
from ollama_asgi.auth import DefaultAuthorizer, model_allowed
from ollama_asgi.contrib._deps import require
from ollama_asgi.contrib.csrf import CSRFMiddleware
from ollama_asgi.contrib.principals import UserAuthorizer, default_user_to_principal


@dataclass
class Model:
    username: str
    is_staff: bool = False
    is_authenticated: bool = True
    ollama_models: list[str] | None = None


class StarletteLike:
    is_authenticated = True
    display_name = "Ada"

    @property
    def identity(self) -> str:
        raise NotImplementedError


@dataclass
class Auth:
    scopes: list[str]


def test_a_model_instance_maps_by_its_usual_attributes() -> None:
    principal = default_user_to_principal(Model("ada", ollama_models=["llama3*"]))
    assert principal == Principal(id="ada", display_name="ada", models=("llama3*",))
    assert default_user_to_principal(Model("root", is_staff=True)).is_admin  # type: ignore[union-attr]


def test_a_string_of_models_is_one_pattern_not_one_per_character() -> None:
    principal = default_user_to_principal({"sub": "ada", "ollama_models": "llama3*"})
    assert principal is not None and principal.models == ("llama3*",)
    assert not model_allowed(principal.models, "mistral")


def test_a_comma_separated_string_of_models_is_several_patterns() -> None:
    principal = default_user_to_principal({"sub": "ada", "ollama_models": "llama3*, qwen*"})
    assert principal is not None and principal.models == ("llama3*", "qwen*")


@pytest.mark.parametrize("models", ["llama3*", ["llama3*"], ("llama3*",)])
def test_the_default_policy_maps_host_users_as_the_adapters_do(models: object) -> None:
    user = Model("ada", ollama_models=models)  # type: ignore[arg-type]
    from_default = DefaultAuthorizer(Settings(auth="host")).resolve({"type": "http", "headers": [], "user": user})
    assert (
        from_default == default_user_to_principal(user) == Principal(id="ada", display_name="ada", models=("llama3*",))
    )


def test_token_claims_map_too() -> None:
    principal = default_user_to_principal({"sub": "svc-1", "roles": ["admin"]})
    assert principal is not None and (principal.id, principal.is_admin) == ("svc-1", True)


def test_unauthenticated_or_missing_users_get_none() -> None:
    assert default_user_to_principal(None) is None
    assert default_user_to_principal(Model("ada", is_authenticated=False)) is None


def test_a_user_without_identity_falls_back_to_its_display_name() -> None:
    assert default_user_to_principal(StarletteLike()) == Principal(id="Ada", display_name="Ada")


def test_admin_scopes_from_the_host_auth_make_an_admin() -> None:
    scope = {"auth": Auth(["ollama:admin"])}
    principal = default_user_to_principal(Model("ada"), scope, admin_scopes=("ollama:admin",))
    assert principal is not None and principal.is_admin


async def test_the_authorizer_follows_the_auth_mode() -> None:
    scope: dict[str, Any] = {"type": "http", "headers": [], "user": Model("ada")}
    assert (await UserAuthorizer(Settings())(scope)) is not None
    assert (await UserAuthorizer(Settings(auth="api_key"))(scope)) is None
    anonymous = await UserAuthorizer(Settings(auth="none"))({"type": "http", "headers": []})
    assert anonymous is not None and anonymous.source == "anonymous"


async def test_a_custom_mapping_is_not_asked_about_anonymous_users() -> None:
    asked: list[object] = []
    authorize = UserAuthorizer(Settings(), lambda user: asked.append(user) or Principal(id="x"))
    assert await authorize({"type": "http", "headers": [], "user": Model("ada", is_authenticated=False)}) is None
    assert asked == []


async def _call(app: CSRFMiddleware, scope: dict[str, Any]) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "http", "path": "/llm/api/chat", "root_path": "/llm", **scope}, receive, send)
    return int(sent[0]["status"])


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize(
    ("method", "headers", "user", "status"),
    [
        ("POST", [(b"cookie", b"csrftoken=abc"), (b"x-csrftoken", b"abc")], Model("ada"), 200),
        ("POST", [(b"cookie", b"csrftoken=abc")], Model("ada"), 403),
        ("POST", [(b"cookie", b"csrftoken=abc"), (b"x-csrftoken", b"abd")], Model("ada"), 403),
        ("POST", [(b"x-csrftoken", b"abc")], Model("ada"), 200),
        ("POST", [(b"authorization", b"Bearer key")], Model("ada"), 200),
        ("POST", [(b"authorization", b"Bearer wrong"), (b"cookie", b"session=s1; csrftoken=abc")], Model("ada"), 403),
        ("POST", [], None, 200),
        ("GET", [], Model("ada"), 200),
    ],
    ids=[
        "token",
        "no-header",
        "wrong-token",
        "no-cookies-nothing-to-forge",
        "api-key",
        "bearer-beside-a-session-cookie",
        "anonymous",
        "safe-method",
    ],
)
async def test_csrf_is_asked_only_of_cookie_sessions(method: str, headers: Any, user: Any, status: int) -> None:
    assert await _call(CSRFMiddleware(_ok), {"method": method, "headers": headers, "user": user}) == status


def test_a_missing_framework_names_the_extra_to_install() -> None:
    with pytest.raises(ImportError, match=r"pip install 'ollama-asgi\[litestar\]'"):
        require("litestar_not_installed", "litestar")
    code = "import sys; sys.modules['django'] = None; import ollama_asgi.contrib.django"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'ollama-asgi[django]'" in result.stderr
