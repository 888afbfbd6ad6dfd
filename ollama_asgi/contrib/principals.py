"""The host's user object, whatever its type, turned into a ``Principal``.

Starlette puts a ``BaseUser`` in ``scope["user"]``; Litestar puts whatever the app's
authentication middleware returned (a model instance, a dict of token claims, a string). The
gateway cannot know what those mean, so hosts pass a ``user_to_principal`` callable; the default
here reads the attribute names most user models share.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ollama_asgi.auth import DefaultAuthorizer, Principal, bearer_token
from ollama_asgi.settings import Settings
from ollama_asgi.types import Scope

__all__ = [
    "UserAuthorizer",
    "UserToPrincipal",
    "default_user_to_principal",
    "is_authenticated_user",
    "uses_host_session",
]

UserToPrincipal = Callable[[Any], "Principal | None | Awaitable[Principal | None]"]

_ANONYMOUS = Principal(id="anonymous", source="anonymous")


def _get(user: Any, name: str) -> Any:
    if isinstance(user, Mapping):
        return user.get(name)
    try:
        return getattr(user, name, None)
    except NotImplementedError:  # Starlette's BaseUser.identity
        return None


def _first(user: Any, *names: str) -> str | None:
    for name in names:
        value = _get(user, name)
        if value not in (None, ""):
            return str(value)
    return None


def is_authenticated_user(user: Any) -> bool:
    """True for a present user whose ``is_authenticated`` (when it has one) is true."""
    if user is None:
        return False
    flag = _get(user, "is_authenticated")
    return True if flag is None else bool(flag)


def default_user_to_principal(
    user: Any, scope: Scope | None = None, *, admin_scopes: tuple[str, ...] = ()
) -> Principal | None:
    """Map a user object (or a mapping of claims) by its common attribute names.

    ``identity``/``username``/``id``/``pk``/``sub``/``email`` name it; ``is_staff``,
    ``is_superuser``, ``is_admin``, an ``"admin"`` role or one of ``admin_scopes`` in
    ``scope["auth"].scopes`` make it an admin; ``ollama_models`` restricts its models.
    """
    if not is_authenticated_user(user):
        return None
    ident = _first(user, "identity", "username", "id", "pk", "sub", "email", "display_name") or str(user)
    roles = _get(user, "roles") or ()
    auth_scopes = set(_get(scope.get("auth"), "scopes") or ()) if scope is not None else set()
    is_admin = (
        any(bool(_get(user, flag)) for flag in ("is_staff", "is_superuser", "is_admin"))
        or (not isinstance(roles, str) and "admin" in roles)
        or bool(auth_scopes.intersection(admin_scopes))
    )
    models = _get(user, "ollama_models")
    return Principal(
        id=ident,
        display_name=_first(user, "display_name", "username", "name") or ident,
        is_admin=is_admin,
        models=None if models is None else tuple(models),
        source="host",
    )


class UserAuthorizer:
    """An ``authorize`` hook: configured API keys first, then the host's ``scope["user"]``.

    Follows ``Settings.auth`` as the default policy does: ``"api_key"`` ignores host users and
    ``"none"`` lets everyone in as an anonymous, non-admin principal.

    Args:
        settings: The gateway's settings (API keys, auth mode, admin scopes).
        user_to_principal: Maps ``scope["user"]`` to a ``Principal`` or None (401); sync or async.
            Only called for a present user whose ``is_authenticated`` (if it has one) is true;
            the default is ``default_user_to_principal``.
    """

    __slots__ = ("_convert", "_keys", "_settings")

    def __init__(self, settings: Settings, user_to_principal: UserToPrincipal | None = None) -> None:
        self._settings = settings
        self._keys = DefaultAuthorizer(settings)
        self._convert = user_to_principal

    async def __call__(self, scope: Scope) -> Principal | None:
        principal = self._keys.from_api_key(scope)
        if principal is not None:
            return principal
        if self._settings.auth == "none":
            return _ANONYMOUS
        user = scope.get("user")
        if self._settings.auth != "host" or not is_authenticated_user(user):
            return None
        if self._convert is None:
            return default_user_to_principal(user, scope, admin_scopes=self._settings.admin_scopes)
        result = self._convert(user)
        if inspect.isawaitable(result):
            result = await result
        return result


def uses_host_session(scope: Scope) -> bool:
    """True when the request is authenticated by the host (a cookie) rather than a bearer key.

    Only such requests can be forged by another site, so only they need a CSRF token.
    """
    return bearer_token(scope) is None and is_authenticated_user(scope.get("user"))
