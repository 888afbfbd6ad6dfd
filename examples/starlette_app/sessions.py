"""A signed session cookie: ``<payload>.<HMAC-SHA256>``, both base64url, with an expiry inside.

Starlette's ``SessionMiddleware`` would do this with ``itsdangerous``; the standard library is
enough for the one thing this app keeps in its session, the username.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

__all__ = ["COOKIE_NAME", "SessionSigner"]

COOKIE_NAME = "session"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Signs and checks session cookies with ``secret_key``; a cookie lives ``max_age`` seconds."""

    def __init__(self, secret_key: bytes, *, max_age: int = 8 * 3600) -> None:
        if len(secret_key) < 16:
            raise ValueError("the session secret key must be at least 16 bytes long")
        self._key = secret_key
        self.max_age = max_age

    def _signature(self, payload: str) -> str:
        return _b64encode(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def dumps(self, username: str) -> str:
        data = json.dumps({"u": username, "exp": int(time.time()) + self.max_age}, separators=(",", ":"))
        payload = _b64encode(data.encode())
        return f"{payload}.{self._signature(payload)}"

    def loads(self, cookie: str | None) -> str | None:
        """The username in a valid, unexpired cookie; None for anything else."""
        if not cookie:
            return None
        payload, _, signature = cookie.partition(".")
        if not hmac.compare_digest(signature.encode("ascii", "replace"), self._signature(payload).encode("ascii")):
            return None
        try:
            data = json.loads(_b64decode(payload))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int) or data["exp"] < time.time():
            return None
        username = data.get("u")
        return username if isinstance(username, str) else None
