"""``create_demo_users``: ``demo`` (may chat with llama3.2 and qwen2.5) and ``admin`` (staff)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand

USERS = {"demo": False, "admin": True}


class Command(BaseCommand):
    help = "Create the demo users (idempotent): demo/demo-password and admin/admin-password."

    def handle(self, *args: Any, **options: Any) -> None:
        group, _ = Group.objects.get_or_create(name="llm-users")
        for name, staff in USERS.items():
            user, created = User.objects.get_or_create(
                username=name, defaults={"is_staff": staff, "is_superuser": staff}
            )
            if created:
                user.set_password(f"{name}-password")
                user.save()
                self.stdout.write(f"created {name} / {name}-password")
            if not staff:
                user.groups.add(group)
