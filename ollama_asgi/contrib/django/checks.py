"""System checks: ``manage.py check`` names the setting that is wrong, before any request fails."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings  # type: ignore[import-untyped]
from django.core.checks import Error  # type: ignore[import-untyped]

from ollama_asgi.contrib.django.conf import MODEL_GROUPS, SETTING, load_settings, parse_model_groups
from ollama_asgi.errors import ConfigError

__all__ = ["check_settings", "check_tables"]


def _where(field: str) -> str:
    return field if field == SETTING else f"{SETTING}[{field!r}]"


def _reason(exc: ConfigError) -> str:
    return str(exc).removeprefix(f"ollama-asgi setting {exc.field!r}: ")


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``ollama_asgi.E001``: a bad ``OLLAMA_ASGI`` entry; ``ollama_asgi.E002``: bad model groups."""
    errors: list[Any] = []
    try:
        load_settings(getattr(django_settings, SETTING, {}))
    except ConfigError as exc:
        errors.append(
            Error(
                f"settings.{_where(exc.field)} is invalid: {_reason(exc)}",
                hint=f"Fix {_where(exc.field)} in your settings module; see Settings.describe() for every key.",
                obj=f"settings.{SETTING}",
                id="ollama_asgi.E001",
            )
        )
    try:
        parse_model_groups(getattr(django_settings, MODEL_GROUPS, None))
    except ConfigError as exc:
        errors.append(
            Error(
                f"settings.{MODEL_GROUPS} is invalid: {_reason(exc)}",
                hint=f'Use {MODEL_GROUPS} = {{"group name": ["llama3*", ...]}}.',
                obj=f"settings.{MODEL_GROUPS}",
                id="ollama_asgi.E002",
            )
        )
    return errors


def check_tables(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``ollama_asgi.E003``: the API key table is missing (``migrate`` never ran), so every bearer
    token the settings do not know would fail at request time."""
    from django.db import DatabaseError, connection  # type: ignore[import-untyped]

    from ollama_asgi.contrib.django.models import ApiKey

    try:
        tables = connection.introspection.table_names()
    except DatabaseError:
        return []  # no database to ask yet: Django's own checks and migrate speak for it
    if ApiKey._meta.db_table in tables:
        return []
    return [
        Error(
            f"the table {ApiKey._meta.db_table} does not exist",
            hint="Run `python manage.py migrate`: API keys kept in the database live there.",
            obj="ollama_asgi.ApiKey",
            id="ollama_asgi.E003",
        )
    ]
