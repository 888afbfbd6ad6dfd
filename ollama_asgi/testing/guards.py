"""Ollama's two request guards: the DNS-rebinding Host check and gin-contrib/cors Origin check."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from ollama_asgi.types import Scope

__all__ = [
    "CORS_ALLOW_HEADERS",
    "DEFAULT_ORIGINS",
    "Headers",
    "cors",
    "host_allowed",
    "loopback_bind",
    "origin_allowed",
]

DEFAULT_ORIGINS = tuple(
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for port in ("", ":*")
    for scheme in ("http", "https")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
"""``envconfig.AllowedOrigins()`` without ``OLLAMA_ORIGINS``."""

CORS_ALLOW_HEADERS = (
    "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,OpenAI-Beta,x-stainless-arch,"
    "x-stainless-async,x-stainless-custom-poll-interval,x-stainless-helper-method,x-stainless-lang,"
    "x-stainless-os,x-stainless-package-version,x-stainless-poll-helper,x-stainless-retry-count,"
    "x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout"
)

Headers = list[tuple[str, str]]


def loopback_bind(scope: Scope) -> bool:
    """Ollama checks the Host header only when it listens on a loopback address.

    A server that is not an IP address (``testserver`` from an in-process test transport) is no
    real bind, so the check is skipped there too.
    """
    server = scope.get("server")
    if not server or not server[0]:
        return False
    try:
        return ipaddress.ip_address(str(server[0]).strip("[]")).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str) -> bool:
    """``allowedHostsMiddleware``: local names and loopback/private/unspecified addresses pass."""
    host = host_header.strip()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return address.is_loopback or address.is_private or address.is_unspecified
    host = host.lower()
    if host in ("", "localhost", socket.gethostname().lower()):
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    """Exact origins, ``*``, and one-wildcard patterns such as ``http://localhost:*``."""
    for pattern in allowed:
        if pattern == "*" or pattern == origin:
            return True
        if "*" in pattern:
            prefix, _, suffix = pattern.partition("*")
            if origin.startswith(prefix) and origin.endswith(suffix) and len(origin) >= len(pattern) - 1:
                return True
    return False


def cors(method: str, headers: dict[str, str], extra_origins: Iterable[str] = ()) -> tuple[str, Headers]:
    """``applyCors``: ("deny" | "preflight" | "ok", headers to add to the response).

    A request without ``Origin``, or whose ``Origin`` is the server itself, is not a CORS request.
    """
    origin = headers.get("origin")
    host = headers.get("host", "")
    if not origin or origin in (f"http://{host}", f"https://{host}"):
        return "ok", []
    if not origin_allowed(origin, (*DEFAULT_ORIGINS, *extra_origins)):
        return "deny", []
    added = [("access-control-allow-origin", origin)]
    if method != "OPTIONS":
        return "ok", [*added, ("vary", "Origin")]
    return "preflight", [
        *added,
        ("access-control-allow-methods", "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"),
        ("access-control-allow-headers", CORS_ALLOW_HEADERS),
        ("access-control-max-age", "43200"),
        ("vary", "Origin"),
        ("vary", "Access-Control-Request-Method"),
        ("vary", "Access-Control-Request-Headers"),
    ]
