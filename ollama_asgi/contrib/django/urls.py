"""``path("llm/", include("ollama_asgi.contrib.django.urls"))`` serves the gateway under ``/llm/``.

Reverse with ``reverse("ollama_asgi:gateway", kwargs={"path": "api/chat"})``.
"""

from __future__ import annotations

from django.urls import re_path  # type: ignore[import-untyped]

from ollama_asgi.contrib.django.views import gateway_view

__all__ = ["app_name", "urlpatterns"]

app_name = "ollama_asgi"

urlpatterns = [re_path(r"^(?P<path>.*)\Z", gateway_view, name="gateway")]
