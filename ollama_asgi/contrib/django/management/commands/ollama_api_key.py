"""``manage.py ollama_api_key NAME``: create (or ``--rotate``) an API key and print its secret once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped]

from ollama_asgi.contrib.django.models import ApiKey

__all__ = ["Command"]


class Command(BaseCommand):  # type: ignore[misc]
    help = "Create an API key for a machine client of the Ollama gateway and print its secret (shown only once)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="who or what will use the key")
        parser.add_argument("--admin", action="store_true", help="allow pull, push, create, copy and delete")
        parser.add_argument("--models", default="", help="comma-separated model patterns, e.g. 'llama3*,qwen2.5*'")
        parser.add_argument("--rotate", action="store_true", help="replace the secret of an existing key")

    def handle(self, *args: Any, name: str, admin: bool, models: str, rotate: bool, **options: Any) -> None:
        key = ApiKey.objects.filter(name=name).first()
        if key is not None and not rotate:
            raise CommandError(f"an API key named {name!r} exists; pass --rotate to give it a new secret")
        if key is None:
            key = ApiKey(name=name, is_admin=admin, allowed_models=models)
        else:
            key.is_admin = key.is_admin or admin
            key.allowed_models = models or key.allowed_models
        secret = key.set_new_secret()
        key.save()
        self.stdout.write(secret)
        self.stderr.write(f"API key {name!r} ready; the secret above is not stored and will not be shown again.")
