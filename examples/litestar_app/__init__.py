"""A Litestar service with its own login, sessions and CSRF, and ollama-asgi mounted at ``/llm``.

Run it with ``make demo APP=litestar`` or ``python -m examples.litestar_app``; build it in tests
with ``create_app(demo_settings(ollama_url))``.
"""

from __future__ import annotations

from examples.litestar_app.app import DEMO_API_KEY, create_app, demo_settings

__all__ = ["DEMO_API_KEY", "create_app", "demo_settings"]
