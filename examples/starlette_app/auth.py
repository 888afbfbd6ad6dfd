"""Turn the session cookie into a Starlette user, which the mounted gateway then trusts.

The gateway reads ``scope["user"]``: ``is_authenticated``, ``identity`` and ``display_name`` name
the caller, ``is_staff`` (or the ``ollama:admin`` auth scope) makes an administrator, and
``ollama_models`` limits which models the user may run.
"""

from __future__ import annotations

from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.requests import HTTPConnection

from .accounts import ACCOUNTS, Account
from .sessions import COOKIE_NAME, SessionSigner

__all__ = ["SessionBackend", "User"]


class User(BaseUser):
    """A logged-in account of the host app."""

    def __init__(self, account: Account) -> None:
        self.account = account

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def identity(self) -> str:
        return self.account.username

    @property
    def display_name(self) -> str:
        return self.account.display_name

    @property
    def is_staff(self) -> bool:
        return self.account.is_staff

    @property
    def ollama_models(self) -> tuple[str, ...] | None:
        return self.account.models


class SessionBackend(AuthenticationBackend):
    """Authenticates requests that carry a valid session cookie; leaves the rest anonymous."""

    def __init__(self, signer: SessionSigner) -> None:
        self.signer = signer

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        account = ACCOUNTS.get(self.signer.loads(conn.cookies.get(COOKIE_NAME)) or "")
        if account is None:
            return None
        scopes = ["authenticated"]
        if account.is_staff:
            scopes.append("ollama:admin")
        return AuthCredentials(scopes), User(account)
