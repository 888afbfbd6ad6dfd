"""Integrations with host frameworks; each needs its extra: ``ollama-asgi[django]`` or ``ollama-asgi[litestar]``.

- ``ollama_asgi.contrib.django``: a Django app (settings, system checks, users and permissions as
  principals, API keys in the database) with a URLconf bridge and an ``asgi.py`` dispatcher.
- ``ollama_asgi.contrib.litestar``: ``OllamaGatewayPlugin``, the gateway mounted behind the app's
  own authentication middleware and guards.
- ``ollama_asgi.contrib.starlette``: helpers for Starlette and FastAPI, which need no adapter to
  mount the gateway; they map the app's user objects to principals and check CSRF tokens.
"""

from __future__ import annotations

__all__: list[str] = []
