"""The host's users: a small in-memory table with salted PBKDF2 hashes (a real app has a database)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

__all__ = ["ACCOUNTS", "Account", "check_credentials"]


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000)


@dataclass(frozen=True, slots=True)
class Account:
    """``models``: what the gateway lets this user run (None: all); staff are its administrators."""

    username: str
    display_name: str
    salt: bytes
    password_hash: bytes
    is_staff: bool = False
    models: tuple[str, ...] | None = None


def _account(username: str, display_name: str, **kwargs: object) -> Account:
    salt = secrets.token_bytes(16)
    return Account(username, display_name, salt, _hash(f"{username}-password", salt), **kwargs)  # type: ignore[arg-type]


ACCOUNTS = {
    "demo": _account("demo", "Demo User", models=("llama3.2*", "qwen2.5*")),
    "admin": _account("admin", "Administrator", is_staff=True),
}
_DUMMY = _account("nobody", "")


def check_credentials(username: str, password: str) -> Account | None:
    """The account when the password is right; an unknown name costs as long as a wrong password."""
    account = ACCOUNTS.get(username)
    probe = account or _DUMMY
    ok = hmac.compare_digest(_hash(password, probe.salt), probe.password_hash)
    return account if ok else None
