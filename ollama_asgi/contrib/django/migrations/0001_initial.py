from __future__ import annotations

from django.db import migrations, models  # type: ignore[import-untyped]

__all__ = ["Migration"]


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="ApiKey",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "name",
                    models.CharField(
                        help_text="Who or what uses this key; shown in logs.", max_length=100, unique=True
                    ),
                ),
                (
                    "prefix",
                    models.CharField(editable=False, help_text="The first characters of the secret.", max_length=12),
                ),
                ("digest", models.CharField(editable=False, max_length=64, unique=True)),
                (
                    "is_admin",
                    models.BooleanField(
                        default=False,
                        help_text="May use the management endpoints: pull, push, create, copy and delete.",
                    ),
                ),
                (
                    "allowed_models",
                    models.CharField(
                        blank=True,
                        help_text="Comma-separated model patterns such as llama3*; empty: every model.",
                        max_length=500,
                    ),
                ),
                ("is_active", models.BooleanField(default=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "verbose_name": "Ollama API key",
                "ordering": ("name",),
                "permissions": [("manage_models", "Can pull, push, create, copy and delete Ollama models")],
            },
        ),
    ]
