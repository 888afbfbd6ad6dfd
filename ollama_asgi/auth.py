"""Who is calling: the host app's user or a machine's API key, turned into one ``Principal``.

The gateway never invents identity. By default it trusts what the host's own authentication put
in ``scope["user"]`` (Starlette and Litestar convention; the Django adapter fills it from the
session) or a configured API key, and nothing else. Keys are compared by their SHA-256 digest,
so lookup time says nothing about how much of a guessed key was right.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from ollama_asgi.model_names import canonical_model
from ollama_asgi.settings import Settings
from ollama_asgi.specs import ApiKey
from ollama_asgi.types import Scope

__all__ = [
    "Authorizer",
    "DefaultAuthorizer",
    "Principal",
    "bearer_token",
    "is_authenticated_user",
    "model_allowed",
    "user_principal",
]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller and what it may do.

    Attributes:
        id: Stable identifier (user id, username or API key id); used for fairness and logs.
        display_name: For logs and the status page.
        is_admin: May use management endpoints (pull, push, create, copy, delete, blobs).
        models: Model name patterns (``fnmatch``, e.g. ``"llama3*"``) this caller may use; None: all.
        weight: Share of capacity in fair queueing relative to other principals.
        priority: ``"interactive"`` or ``"batch"``.
        source: Where the identity came from: ``"host"``, ``"api_key"`` or ``"anonymous"``.
        requests_per_minute: Rate limit; None falls back to ``Settings.rate_limit_rpm``.
        tokens_per_minute: Token budget; None falls back to ``Settings.rate_limit_tpm``.
        cloud_models: May use cloud models (relayed by Ollama to ollama.com); None falls back to
            ``Settings.cloud_models``. ``models`` still applies to them.
    """

    id: str
    display_name: str = ""
    is_admin: bool = False
    models: tuple[str, ...] | None = None
    weight: float = 1.0
    priority: Literal["interactive", "batch"] = "interactive"
    source: Literal["host", "api_key", "anonymous"] = "host"
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    cloud_models: bool | None = None


Authorizer = Callable[[Scope], "Awaitable[Principal | None] | Principal | None"]


def model_allowed(patterns: tuple[str, ...] | None, model: str) -> bool:
    """True when ``model`` matches one of ``patterns`` (compared in Ollama's canonical form)."""
    if patterns is None:
        return True
    name = canonical_model(model)
    bare = name.removesuffix(":latest")
    for pattern in patterns:
        pattern = pattern.lower()
        if fnmatchcase(name, pattern) or fnmatchcase(bare, pattern) or fnmatchcase(name, canonical_model(pattern)):
            return True
    return False


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


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


def _model_patterns(value: object) -> tuple[str, ...] | None:
    """A user's ``ollama_models``: None (all), a comma-separated string, or an iterable of patterns.

    A string is never iterated character by character: ``"llama3*"`` is one pattern, not seven of
    which the lone ``"*"`` would allow every model.
    """
    if value is None:
        return None
    if isinstance(value, str | bytes):
        text = value.decode() if isinstance(value, bytes) else value
        return tuple(p.strip() for p in text.split(",") if p.strip())
    try:
        return tuple(str(p).strip() for p in value if str(p).strip())  # type: ignore[attr-defined]
    except TypeError:
        return ()  # something that is no list of patterns allows nothing


def is_authenticated_user(user: Any) -> bool:
    """True for a present user whose ``is_authenticated`` (when it has one) is true."""
    if user is None:
        return False
    flag = _get(user, "is_authenticated")
    return True if flag is None else bool(flag)


def user_principal(user: Any, scope: Scope | None = None, *, admin_scopes: tuple[str, ...] = ()) -> Principal | None:
    """The one mapping of a host's user object (or a mapping of token claims) to a ``Principal``.

    ``identity``/``username``/``id``/``pk``/``sub``/``email`` name it; ``is_staff``,
    ``is_superuser``, ``is_admin``, an ``"admin"`` role or one of ``admin_scopes`` in
    ``scope["auth"].scopes`` make it an admin; ``ollama_models`` restricts its models; a boolean
    ``ollama_cloud_models`` allows or refuses it cloud models whatever ``Settings.cloud_models`` says.
    """
    if not is_authenticated_user(user):
        return None
    ident = _first(user, "identity", "username", "id", "pk", "sub", "email", "display_name") or str(user)
    roles = _get(user, "roles") or ()
    auth_scopes = set(_get(scope.get("auth"), "scopes") or ()) if scope is not None else set()
    is_admin = (
        any(bool(_get(user, flag)) for flag in ("is_staff", "is_superuser", "is_admin"))
        or (roles == "admin" if isinstance(roles, str) else "admin" in roles)
        or bool(auth_scopes.intersection(admin_scopes))
    )
    return Principal(
        id=ident,
        display_name=_first(user, "display_name", "username", "name") or ident,
        is_admin=is_admin,
        models=_model_patterns(_get(user, "ollama_models")),
        source="host",
        cloud_models=cloud if isinstance(cloud := _get(user, "ollama_cloud_models"), bool) else None,
    )


_ANONYMOUS = Principal(id="anonymous", source="anonymous")
_MAX_VERIFIED = 4096  # distinct header spellings of valid keys remembered (a key has few)


def _key_principal(key: ApiKey) -> Principal:
    return Principal(
        id=key.id,
        display_name=key.id,
        is_admin=key.admin,
        models=key.models,
        weight=key.weight,
        priority="batch" if key.priority == "batch" else "interactive",
        source="api_key",
        requests_per_minute=key.requests_per_minute,
        tokens_per_minute=key.tokens_per_minute,
        cloud_models=key.cloud_models,
    )


class DefaultAuthorizer:
    """The policy in ``Settings.auth``: host user, API key, or (explicitly) nobody at all."""

    __slots__ = ("_keys", "_principals", "_settings", "_verified")

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._keys: dict[str, ApiKey] = {k.sha256: k for k in (*settings.api_keys, *settings.admin_api_keys)}
        # Principals are immutable: one per key, built once instead of on every request.
        self._principals: dict[str, Principal] = {digest: _key_principal(k) for digest, k in self._keys.items()}
        # Authorization header values already proven to hold a configured key: a dict lookup instead
        # of a SHA-256 per request. Only valid keys enter, so unknown tokens cannot grow it; settings
        # are frozen, so an entry never goes stale.
        self._verified: dict[bytes, Principal] = {}

    def from_api_key(self, scope: Scope) -> Principal | None:
        if not self._keys:
            return None
        header = api_key = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
            if name == b"x-api-key" and api_key is None:
                api_key = value
        if header is None:
            if api_key is None:
                return None
            # The anthropic client sends its key as X-Api-Key; read only where no Authorization is
            # sent, and remembered apart from Authorization values (a NUL never reaches a header).
            header = b"\0" + bytes(api_key)
        elif header.__class__ is not bytes:  # ASGI says bytes; a bytearray would not hash
            header = bytes(header)
        # A dict lookup compares the keyed 64-bit hash before any byte, so its timing says nothing
        # about how close a wrong token came to a valid one.
        principal = self._verified.get(header)
        if principal is not None:
            return principal
        token = header[1:].decode("latin-1").strip() if header[:1] == b"\0" else bearer_token(scope)
        if not token:
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        key = self._keys.get(digest)
        if key is None or not hmac.compare_digest(key.sha256, digest):
            return None
        principal = self._principals[digest]
        if len(self._verified) < _MAX_VERIFIED:
            self._verified[header] = principal
        return principal

    def from_host_user(self, scope: Scope) -> Principal | None:
        return user_principal(scope.get("user"), scope, admin_scopes=self._settings.admin_scopes)

    async def __call__(self, scope: Scope) -> Principal | None:
        return self.resolve(scope)

    def resolve(self, scope: Scope) -> Principal | None:
        """The caller, or None; synchronous (the gateway calls it without a coroutine)."""
        mode = self._settings.auth
        if mode == "none":
            return self.from_api_key(scope) or _ANONYMOUS
        principal = self.from_api_key(scope)
        if principal is None and mode == "host":
            principal = self.from_host_user(scope)
        return principal


async def call_authorizer(authorize: Authorizer, scope: Scope) -> Principal | None:
    result = authorize(scope)
    if inspect.isawaitable(result):
        result = await result
    return result
