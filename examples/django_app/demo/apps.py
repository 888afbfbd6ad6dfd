from __future__ import annotations

from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "examples.django_app.demo"
    label = "demo"
