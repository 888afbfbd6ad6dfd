"""ollama-asgi: a mountable ASGI gateway in front of Ollama.

Mount ``OllamaGateway(Settings(...))`` at ``/llm`` in a Starlette, FastAPI, Litestar or Django app;
it serves Ollama's native API and the OpenAI-compatible API behind the host's own auth.
"""

from __future__ import annotations

from ollama_asgi._version import __version__
from ollama_asgi.auth import Authorizer, Principal
from ollama_asgi.errors import ConfigError, GatewayError
from ollama_asgi.gateway import OllamaGateway
from ollama_asgi.mount import PrefixDispatcher
from ollama_asgi.settings import Settings
from ollama_asgi.specs import ApiKey

__all__ = [
    "ApiKey",
    "Authorizer",
    "ConfigError",
    "GatewayError",
    "OllamaGateway",
    "PrefixDispatcher",
    "Principal",
    "Settings",
    "__version__",
]
