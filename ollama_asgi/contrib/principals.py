"""The host's user object, whatever its type, turned into a ``Principal``.

Starlette puts a ``BaseUser`` in ``scope["user"]``; Litestar puts whatever the app's
authentication middleware returned (a model instance, a dict of token claims, a string). The
gateway cannot know what those mean, so hosts pass a ``user_to_principal`` callable; the default
is the core's one mapping (``ollama_asgi.auth.user_principal``), which reads the attribute names
most user models share.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ollama_asgi.auth import DefaultAuthorizer, Principal, is_authenticated_user, user_principal
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

# The mapping every host shares, under the name hosts configure it by.
default_user_to_principal = user_principal


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


def uses_host_session(scope: Scope, user: Any = None) -> bool:
    """True when a browser could have sent this request in the host user's name: the host
    authenticated a user (``user``, else ``scope["user"]``) and the request carries cookies.

    Only such requests can be forged by another site, so only they need a CSRF token. An
    ``Authorization`` header does not exempt them: whatever it holds (an invalid key, another
    scheme), the cookie may still be what authenticates the request.
    """
    if not is_authenticated_user(scope.get("user") if user is None else user):
        return False
    return any(name == b"cookie" for name, _ in scope.get("headers", ()))
