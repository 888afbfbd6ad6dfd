"""The host abstraction the conformance suite is written against (one implementation per framework).

Every host has the same three users, each signing in the way that host's own users do: ``alice``
may use llama3.2 and qwen2.5, ``bob`` only qwen2.5, ``root`` is staff (an administrator). API keys
come from the gateway's settings: ``API_KEY`` (ordinary) and ``ADMIN_KEY`` (administrator).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import ollama

from tests.hosts.shared import ADMIN_KEY, API_KEY

__all__ = ["ADMIN_KEY", "API_KEY", "Host", "Session"]


@dataclass
class Session:
    """A signed-in browser: its cookies and the CSRF token its pages would send back."""

    cookies: httpx.Cookies
    csrf_token: str

    @property
    def csrf_headers(self) -> dict[str, str]:
        return {"X-CSRFToken": self.csrf_token}


@dataclass
class Host:
    name: str
    url: str
    sign_in: Callable[[str], Session]
    stop: Callable[[], None]
    prefix: str = "/llm"
    _sessions: dict[str, Session] = field(default_factory=dict)

    @property
    def llm_url(self) -> str:
        return self.url + self.prefix

    def session(self, username: str) -> Session:
        """A session for ``username``, signed in once per host and reused."""
        if username not in self._sessions:
            self._sessions[username] = self.sign_in(username)
        return self._sessions[username]

    def as_user(self, username: str, *, csrf: bool = True, **kwargs: Any) -> ollama.Client:
        """The official ollama client carrying ``username``'s session cookie (and CSRF token)."""
        session = self.session(username)
        headers = session.csrf_headers if csrf else {}
        return ollama.Client(host=self.llm_url, cookies=session.cookies, headers=headers, **kwargs)

    def with_key(self, key: str = API_KEY, **kwargs: Any) -> ollama.Client:
        return ollama.Client(host=self.llm_url, headers={"Authorization": f"Bearer {key}"}, **kwargs)

    def anonymous(self) -> ollama.Client:
        return ollama.Client(host=self.llm_url)


def cookie_value(cookies: httpx.Cookies, name: str) -> str:
    value = cookies.get(name)
    if not value:
        raise AssertionError(f"the host set no {name!r} cookie")
    return value
