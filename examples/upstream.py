"""Which Ollama the example apps talk to: ``$OLLAMA_HOST`` when it answers, else the built-in emulator.

Shared by the Starlette, Django and Litestar examples so ``make demo APP=...`` behaves the same.
"""

from __future__ import annotations

import urllib.request
from contextlib import ExitStack
from urllib.parse import urlsplit

DEFAULT_OLLAMA = "http://127.0.0.1:11434"

# Loopback probes must not go through an HTTP proxy configured in the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ollama_url(value: str) -> str:
    """``OLLAMA_HOST`` as a base URL; as in Ollama, ``host`` or ``host:port`` means http, port 11434."""
    value = value.strip().rstrip("/") or DEFAULT_OLLAMA
    if "://" not in value:
        value = "http://" + value
        if urlsplit(value).port is None:
            value += ":11434"
    return value


def ollama_is_running(url: str, timeout: float = 1.0) -> bool:
    try:
        with _opener.open(url + "/", timeout=timeout) as resp:
            return resp.status == 200 and b"Ollama is running" in resp.read(256)
    except (OSError, ValueError):
        return False


def choose_upstream(configured: str, stack: ExitStack) -> tuple[str, str]:
    """The Ollama base URL to use and a line describing it; an emulator started here stops with ``stack``."""
    url = ollama_url(configured)
    if ollama_is_running(url):
        return url, f"Ollama at {url}"
    from ollama_asgi.testing import EmulatorServer

    emulator = stack.enter_context(EmulatorServer(token_interval=0.03))
    return emulator.url, f"the built-in Ollama emulator at {emulator.url} (no Ollama answered at {url})"
