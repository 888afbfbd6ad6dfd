"""The Django app: registers the settings checks and drops cached settings when they change."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]

__all__ = ["OllamaAsgiConfig"]


class OllamaAsgiConfig(AppConfig):  # type: ignore[misc]
    name = "ollama_asgi.contrib.django"
    # The label makes permissions read "ollama_asgi.manage_models".
    label = "ollama_asgi"
    verbose_name = "Ollama gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks  # type: ignore[import-untyped]
        from django.core.signals import setting_changed  # type: ignore[import-untyped]

        from ollama_asgi.contrib.django import conf
        from ollama_asgi.contrib.django.checks import check_settings, check_tables

        checks.register(check_settings, "ollama_asgi")
        checks.register(check_tables, "ollama_asgi")
        setting_changed.connect(conf.reset, dispatch_uid="ollama_asgi.conf.reset")
