"""Litestar 2.x: ``OllamaGatewayPlugin`` mounts the gateway behind the app's own auth and guards.

::

    from ollama_asgi.contrib.litestar import OllamaGatewayPlugin

    app = Litestar(
        route_handlers=[...],
        middleware=[session_config.middleware, MyAuthenticationMiddleware],
        plugins=[OllamaGatewayPlugin(Settings.from_module("myapp.settings"), path="/llm")],
    )
"""

from __future__ import annotations

from ollama_asgi.contrib._deps import require

require("litestar", "litestar")

from ollama_asgi.contrib.litestar.handler import to_spec_scope  # noqa: E402
from ollama_asgi.contrib.litestar.plugin import OllamaGatewayPlugin  # noqa: E402

__all__ = ["OllamaGatewayPlugin", "to_spec_scope"]
