"""The admin page for API keys: a new key's secret is shown once, in the confirmation message."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages  # type: ignore[import-untyped]

from ollama_asgi.contrib.django.models import ApiKey

__all__ = ["ApiKeyAdmin"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):  # type: ignore[misc]
    list_display = ("name", "prefix", "is_admin", "allowed_models", "is_active", "created_at")
    list_filter = ("is_active", "is_admin")
    search_fields = ("name", "prefix")
    fields = ("name", "is_admin", "allowed_models", "is_active", "prefix", "created_at")
    readonly_fields = ("prefix", "created_at")

    def save_model(self, request: Any, obj: ApiKey, form: Any, change: bool) -> None:
        secret = None if change else obj.set_new_secret()
        super().save_model(request, obj, form, change)
        if secret is not None:
            messages.warning(request, f"The secret of {obj.name} is {secret} ; copy it now, it is not shown again.")
