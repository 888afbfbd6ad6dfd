"""A Starlette service with its own login and users, and ollama-asgi mounted at ``/llm``.

Run it with ``make demo`` or ``python -m examples.starlette_app``; build it in tests with
``create_app(demo_settings(ollama_url))``.
"""

from __future__ import annotations

from .app import CSRF_COOKIE, CSRF_HEADER, DEMO_API_KEY, GATEWAY_PREFIX, create_app, demo_settings

__all__ = ["CSRF_COOKIE", "CSRF_HEADER", "DEMO_API_KEY", "GATEWAY_PREFIX", "create_app", "demo_settings"]
