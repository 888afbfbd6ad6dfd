"""``mount()``: the gateway beside Django in ``asgi.py``, for the lowest overhead.

Django's URLconf cannot route to an ASGI app, so the core ``PrefixDispatcher`` sits in front of
Django: requests under the prefix go to the gateway (through the session step), everything else
to Django untouched. The dispatcher answers lifespan events itself, because Django's handler
raises on them, and closes the gateway's upstream connections at shutdown.
"""

from __future__ import annotations

from ollama_asgi.contrib.django import conf
from ollama_asgi.contrib.django.principal import DjangoAuthorizer
from ollama_asgi.contrib.django.session import DjangoSessionAuth
from ollama_asgi.gateway import OllamaGateway
from ollama_asgi.mount import PrefixDispatcher
from ollama_asgi.settings import Settings
from ollama_asgi.types import ASGIApp, Receive, Scope, Send

__all__ = ["mount"]


class _ConfiguredGateway:
    """The gateway built from the Django settings, looked up per request so setting changes apply."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await conf.gateway()(scope, receive, send)

    async def aclose(self) -> None:
        gateway = conf.built_gateway()
        if gateway is not None:
            await gateway.aclose()


def mount(django_app: ASGIApp, prefix: str = "/llm", *, settings: Settings | None = None) -> PrefixDispatcher:
    """Serve the gateway at ``prefix`` and Django everywhere else.

    Args:
        django_app: ``get_asgi_application()`` (call it first: it sets Django up).
        prefix: The mount point; matched by whole path segments, so ``/llmx`` stays Django's.
        settings: Overrides ``settings.OLLAMA_ASGI``.

    Returns:
        The ASGI application to serve, e.g. ``application = mount(get_asgi_application())``.
    """
    gateway: ASGIApp
    if settings is None:
        gateway = _ConfiguredGateway()
    else:
        gateway = OllamaGateway(settings, authorize=DjangoAuthorizer(settings, conf.model_groups()))
    return PrefixDispatcher(DjangoSessionAuth(gateway), prefix, fallback=django_app)
