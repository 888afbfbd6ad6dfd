"""The host's user store: a small in-memory table with salted PBKDF2 password hashes.

A real service keeps these in its database; the shape is the same. Passwords are never stored,
only ``pbkdf2_sha256$<iterations>$<salt>$<hash>`` strings (Django's format), so this file can be
read without learning them. The demo passwords are printed by ``python -m examples.starlette_app``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

__all__ = ["ACCOUNTS", "Account", "check_credentials", "hash_password", "verify_password"]

_ITERATIONS = 120_000


@dataclass(frozen=True, slots=True)
class Account:
    """One user of the host app.

    ``models`` is what the gateway lets this user run (``fnmatch`` patterns, None: every model);
    ``is_staff`` users are the gateway's administrators (pull, delete, create models).
    """

    username: str
    display_name: str
    password_hash: str
    is_staff: bool = False
    models: tuple[str, ...] | None = None


def hash_password(password: str, *, salt: str | None = None, iterations: int = _ITERATIONS) -> str:
    salt = salt or secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        algorithm, iterations, salt, _ = encoded.split("$", 3)
        rounds = int(iterations)
    except ValueError:
        return False
    if algorithm != "pbkdf2_sha256":
        return False
    return hmac.compare_digest(hash_password(password, salt=salt, iterations=rounds), encoded)


ACCOUNTS: dict[str, Account] = {
    account.username: account
    for account in (
        Account(
            username="demo",
            display_name="Demo User",
            password_hash="pbkdf2_sha256$120000$558173b2ef412871$AoDxx+sfj2tng4hfkpSwnjuJjFXD5Wqiy8bsIJkJt0U=",
            models=("llama3.2*", "qwen2.5*"),
        ),
        Account(
            username="admin",
            display_name="Administrator",
            password_hash="pbkdf2_sha256$120000$49489e9c1cdcd709$q1UqjSmZQ+iIkpsbjjJxCXaxoL1oHZQ/z5oUK88rP+I=",
            is_staff=True,
        ),
    )
}

# Checked when the username is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = hash_password(secrets.token_hex(8))


def check_credentials(username: str, password: str) -> Account | None:
    """The account for ``username`` when ``password`` is right, else None."""
    account = ACCOUNTS.get(username)
    ok = verify_password(password, account.password_hash if account else _DUMMY_HASH)
    return account if ok and account is not None else None
