"""The ASGI entry point, as in any Django project (serve it with uvicorn: streams need ASGI).

The gateway is reached through ``urls.py``. To bypass Django's middleware for the lowest
overhead, drop the ``include`` there and wrap the application here instead::

    from ollama_asgi.contrib.django import mount
    application = mount(get_asgi_application(), prefix="/llm")
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")

application = get_asgi_application()
