"""Both ways in: ``django_application`` serves ``/llm/`` through the URLconf bridge, ``application``
puts the ``mount()`` dispatcher in front of it, as a project's ``asgi.py`` would."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from ollama_asgi.contrib.django import mount  # importable before Django is set up

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib.django.project.settings")

django_application = get_asgi_application()
application = mount(django_application, prefix="/llm")
