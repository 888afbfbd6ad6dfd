"""Django users and database API keys as principals: the ``authorize`` hook of the Django gateway.

Order: API keys from ``OLLAMA_ASGI`` (no database query), then keys in the ``ApiKey`` table, then
the user in ``scope["user"]`` (put there by the URLconf bridge or the ``asgi.py`` session step).
Anonymous users get None, which the gateway answers with 401. A bearer token that is no API key
falls through to the user, so middleware that authenticates its own bearer tokens (OAuth) keeps
working.

A user is an admin (pull, push, create, copy, delete; every model) when ``is_staff``, a superuser
or granted ``ollama_asgi.manage_models``. Other users may use the models that
``OLLAMA_ASGI_MODEL_GROUPS`` lists for their groups, or every model when that setting is absent.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError  # type: ignore[import-untyped]

from ollama_asgi.auth import DefaultAuthorizer, Principal, bearer_token
from ollama_asgi.errors import GatewayError
from ollama_asgi.settings import Settings
from ollama_asgi.types import Scope

__all__ = ["MANAGE_PERMISSION", "DjangoAuthorizer"]

MANAGE_PERMISSION = "ollama_asgi.manage_models"
_ANONYMOUS = Principal(id="anonymous", source="anonymous")
logger = logging.getLogger("ollama_asgi")


class DjangoAuthorizer:
    """The Django gateway's ``authorize(scope)``.

    Args:
        settings: The gateway settings (auth mode, API keys).
        model_groups: Group name to model patterns; None leaves models unrestricted.
    """

    __slots__ = ("_groups", "_keys", "_settings")

    def __init__(self, settings: Settings, model_groups: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self._settings = settings
        self._keys = DefaultAuthorizer(settings)
        self._groups = dict(model_groups) if model_groups is not None else None

    async def __call__(self, scope: Scope) -> Principal | None:
        principal = self._keys.from_api_key(scope)
        if principal is not None:
            return principal
        token = bearer_token(scope)
        if token is not None:
            principal = await _stored_key(token)
            if principal is not None:
                return principal
        if self._settings.auth == "none":
            return _ANONYMOUS
        user = scope.get("user")
        if self._settings.auth != "host" or user is None or not user.is_authenticated:
            return None
        result: Principal = await sync_to_async(self.user_principal)(user)
        return result

    def user_principal(self, user: Any) -> Principal:
        """The principal of an authenticated user (runs queries: call it from a sync context)."""
        has_perm = getattr(user, "has_perm", None)  # custom user models may lack PermissionsMixin
        is_admin = bool(
            getattr(user, "is_staff", False)
            or getattr(user, "is_superuser", False)
            or (has_perm is not None and has_perm(MANAGE_PERMISSION))
        )
        name = user.get_username()
        return Principal(
            id=name,
            display_name=name,
            is_admin=is_admin,
            models=None if is_admin else self._models_of(user),
            source="host",
        )

    def _models_of(self, user: Any) -> tuple[str, ...] | None:
        if self._groups is None:
            return None
        groups = getattr(user, "groups", None)
        patterns: list[str] = []
        for group in groups.values_list("name", flat=True) if groups is not None else ():
            for pattern in self._groups.get(group, ()):
                if pattern == "*":
                    return None
                if pattern not in patterns:
                    patterns.append(pattern)
        return tuple(patterns)


async def _stored_key(token: str) -> Principal | None:
    from django.apps import apps  # type: ignore[import-untyped]

    if not apps.is_installed("ollama_asgi.contrib.django"):
        return None
    from ollama_asgi.contrib.django.models import ApiKey

    digest = hashlib.sha256(token.encode()).hexdigest()
    try:
        key = await ApiKey.objects.filter(digest=digest, is_active=True).afirst()
    except DatabaseError as exc:
        logger.error("API keys stored in the database cannot be read: %s (run `manage.py migrate`)", exc)
        raise GatewayError(503, "API keys stored in the database cannot be read; run `manage.py migrate`") from exc
    if key is None:
        return None
    return Principal(
        id=key.name, display_name=key.name, is_admin=key.is_admin, models=key.model_patterns(), source="api_key"
    )
