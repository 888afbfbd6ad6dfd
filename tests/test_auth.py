from __future__ import annotations

from dataclasses import dataclass

import pytest

from ollama_asgi import Settings
from ollama_asgi.auth import DefaultAuthorizer, model_allowed


@dataclass
class User:
    is_authenticated: bool = True
    username: str = "alice"
    is_staff: bool = False


@dataclass
class Auth:
    scopes: list[str]


def scope(user: object = None, token: str | None = None, auth: object = None) -> dict[str, object]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return {"type": "http", "headers": headers, "user": user, "auth": auth}


SETTINGS = Settings.from_mapping({"api_keys": ("ci=ci-secret-key",), "admin_api_keys": ("ops=ops-secret-key",)})


async def test_host_mode_accepts_the_authenticated_host_user() -> None:
    principal = await DefaultAuthorizer(SETTINGS)(scope(User()))
    assert principal is not None
    assert (principal.id, principal.source, principal.is_admin) == ("alice", "host", False)


async def test_unauthenticated_host_user_is_refused() -> None:
    assert await DefaultAuthorizer(SETTINGS)(scope(User(is_authenticated=False))) is None
    assert await DefaultAuthorizer(SETTINGS)(scope()) is None


async def test_staff_users_and_admin_scopes_are_admins() -> None:
    authorize = DefaultAuthorizer(SETTINGS)
    assert (await authorize(scope(User(is_staff=True)))).is_admin  # type: ignore[union-attr]
    assert (await authorize(scope(User(), auth=Auth(["ollama:admin"])))).is_admin  # type: ignore[union-attr]
    assert not (await authorize(scope(User(), auth=Auth(["authenticated"])))).is_admin  # type: ignore[union-attr]


async def test_api_keys_authenticate_machines() -> None:
    authorize = DefaultAuthorizer(SETTINGS)
    principal = await authorize(scope(token="ci-secret-key"))
    assert principal is not None and principal.id == "ci" and not principal.is_admin
    admin = await authorize(scope(token="ops-secret-key"))
    assert admin is not None and admin.is_admin
    assert await authorize(scope(token="ci-secret-kez")) is None


async def test_api_key_only_mode_ignores_host_users() -> None:
    authorize = DefaultAuthorizer(SETTINGS.replace(auth="api_key"))
    assert await authorize(scope(User())) is None
    assert await authorize(scope(token="ci-secret-key")) is not None


async def test_auth_none_gives_an_anonymous_non_admin() -> None:
    principal = await DefaultAuthorizer(Settings(auth="none"))(scope())
    assert principal is not None and principal.source == "anonymous" and not principal.is_admin


@pytest.mark.parametrize(
    ("patterns", "model", "allowed"),
    [
        (None, "anything", True),
        (("llama3.2",), "llama3.2:latest", True),
        (("llama3.2:latest",), "LLAMA3.2", True),
        (("llama3*",), "llama3.2:3b", True),
        (("llama3.2",), "llama3.2:70b", False),
        (("nomic-embed-text",), "llama3.2", False),
        ((), "llama3.2", False),
    ],
)
def test_model_patterns(patterns: tuple[str, ...] | None, model: str, allowed: bool) -> None:
    assert model_allowed(patterns, model) is allowed


def test_a_remembered_key_still_needs_the_exact_header_and_wrong_tokens_are_not_remembered() -> None:
    authorizer = DefaultAuthorizer(SETTINGS)
    first = authorizer.resolve(scope(token="ci-secret-key"))
    assert first is not None and first.id == "ci"
    assert authorizer.resolve(scope(token="ci-secret-key")) is first  # answered from memory, same Principal
    # A near miss of a remembered header is checked afresh and refused.
    for wrong in ("ci-secret-keY", "ci-secret-ke", "ops-secret-key-x", "xci-secret-key"):
        assert authorizer.resolve(scope(token=wrong)) is None
    assert authorizer.resolve({"type": "http", "headers": [(b"authorization", b"Basic ci-secret-key")]}) is None
    admin = authorizer.resolve(scope(token="ops-secret-key"))
    assert admin is not None and admin.is_admin
    assert len(authorizer._verified) == 2  # the two valid headers; refused ones leave nothing behind


def test_remembered_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import ollama_asgi.auth as auth

    monkeypatch.setattr(auth, "_MAX_VERIFIED", 3)
    authorizer = DefaultAuthorizer(SETTINGS)
    # Header spellings of one valid key (the scheme is case-insensitive, extra spaces are stripped).
    spellings = [b"Bearer ci-secret-key", b"bearer ci-secret-key", b"BEARER ci-secret-key", b"Bearer  ci-secret-key"]
    for header in spellings:
        principal = authorizer.resolve({"type": "http", "headers": [(b"authorization", header)]})
        assert principal is not None and principal.id == "ci"
    assert len(authorizer._verified) == 3


def test_header_values_given_as_bytearray_are_accepted() -> None:
    authorizer = DefaultAuthorizer(SETTINGS)
    for _ in range(2):  # checked, then remembered
        principal = authorizer.resolve(
            {"type": "http", "headers": [(b"authorization", bytearray(b"Bearer ci-secret-key"))]}
        )
        assert principal is not None and principal.id == "ci"


def test_an_x_api_key_header_is_an_api_key() -> None:
    authorizer = DefaultAuthorizer(SETTINGS)
    for _ in range(2):  # checked, then remembered
        principal = authorizer.resolve({"type": "http", "headers": [(b"x-api-key", b"ci-secret-key")]})
        assert principal is not None and principal.id == "ci"
    assert authorizer.resolve({"type": "http", "headers": [(b"x-api-key", b"ci-secret-kez")]}) is None


def test_authorization_is_read_before_x_api_key() -> None:
    headers = [(b"x-api-key", b"ops-secret-key"), (b"authorization", b"Bearer wrong-key")]
    assert DefaultAuthorizer(SETTINGS).resolve({"type": "http", "headers": headers}) is None


def test_an_x_api_key_is_not_taken_for_a_remembered_authorization_value() -> None:
    authorizer = DefaultAuthorizer(SETTINGS)
    assert authorizer.resolve(scope(token="ci-secret-key")) is not None
    assert authorizer.resolve({"type": "http", "headers": [(b"x-api-key", b"Bearer ci-secret-key")]}) is None
