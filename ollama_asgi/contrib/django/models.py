"""API keys for machine clients, kept in the project's database and managed in the admin.

Only a SHA-256 digest of each key is stored, so a database dump or the admin page never shows a
usable secret; the secret is shown once, when the key is created.
"""

from __future__ import annotations

import hashlib
import secrets

from django.db import models  # type: ignore[import-untyped]

__all__ = ["ApiKey"]

SECRET_PREFIX = "oak_"


class ApiKey(models.Model):  # type: ignore[misc]
    name = models.CharField(max_length=100, unique=True, help_text="Who or what uses this key; shown in logs.")
    prefix = models.CharField(max_length=12, editable=False, help_text="The first characters of the secret.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    is_admin = models.BooleanField(
        default=False, help_text="May use the management endpoints: pull, push, create, copy and delete."
    )
    allowed_models = models.CharField(
        max_length=500, blank=True, help_text="Comma-separated model patterns such as llama3*; empty: every model."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "Ollama API key"
        ordering = ("name",)
        permissions = [("manage_models", "Can pull, push, create, copy and delete Ollama models")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def digest_of(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    def set_new_secret(self) -> str:
        """Give the key a fresh random secret and return it; only its digest is kept."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        self.digest = self.digest_of(secret)
        self.prefix = secret[:12]
        return secret

    def model_patterns(self) -> tuple[str, ...] | None:
        patterns = tuple(p.strip() for p in self.allowed_models.split(",") if p.strip())
        return patterns or None
