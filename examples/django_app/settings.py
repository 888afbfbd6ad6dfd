"""Settings of the demo project. The ollama-asgi parts are ``INSTALLED_APPS``, ``OLLAMA_ASGI`` and
``OLLAMA_ASGI_MODEL_GROUPS``; the rest is a stock Django project on SQLite."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("DJANGO_DEMO_DATA", REPO / ".demo"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-change-me")  # never reuse outside the demo
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ollama_asgi.contrib.django",
    "examples.django_app.demo",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.gzip.GZipMiddleware",  # streams pass uncompressed: they say Content-Encoding: identity
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "examples.django_app.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "django-demo.sqlite3"}}
STATIC_URL = "static/"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat"
LOGOUT_REDIRECT_URL = "login"

# The gateway. `python -m examples.django_app` points OLLAMA_HOST at the emulator when no Ollama answers.
OLLAMA_ASGI = {
    "upstreams": os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434",
    # For curl and scripts; database keys: `python -m examples.django_app.manage ollama_api_key NAME`.
    "api_keys": ["demo-key=demo-api-key-123"],
}
# Members of "llm-users" may use these models; staff (admin) may use all and pull or delete them.
OLLAMA_ASGI_MODEL_GROUPS = {"llm-users": ["llama3.2*", "qwen2.5*"]}
