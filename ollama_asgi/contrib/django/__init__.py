"""Django: the gateway inside a Django project, with its users, permissions and settings.

Add ``"ollama_asgi.contrib.django"`` to ``INSTALLED_APPS``, configure ``OLLAMA_ASGI = {...}`` in
the settings module (``manage.py check`` validates it), then choose one way in:

- the URLconf bridge, which runs the full middleware stack (any auth backend, CSRF, sessions)::

      path("llm/", include("ollama_asgi.contrib.django.urls"))

- the ``asgi.py`` dispatcher, the lowest overhead, which resolves session users itself::

      application = mount(get_asgi_application(), prefix="/llm")

Both must be served by an ASGI server (uvicorn, daphne, hypercorn) for answers to stream.
"""

from __future__ import annotations

from ollama_asgi.contrib._deps import require

require("django", "django")

from ollama_asgi.contrib.django.asgi import mount  # noqa: E402

__all__ = ["mount"]
