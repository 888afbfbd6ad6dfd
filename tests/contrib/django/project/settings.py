"""Settings of the embedded test project; the database file and Ollama URL come from the environment."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent

SECRET_KEY = "tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "ollama_asgi.contrib.django",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # GZip must step aside for the gateway's streams (they say Content-Encoding: identity).
    "django.middleware.gzip.GZipMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.contrib.django.project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [HERE / "templates"],
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
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TEST_DJANGO_DB", ":memory:"),
        "OPTIONS": {"timeout": 20},
    }
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins; tests only
LOGIN_REDIRECT_URL = "/whoami/"

OLLAMA_ASGI = {
    "upstreams": os.environ.get("TEST_DJANGO_UPSTREAM", "http://127.0.0.1:11434"),
    "api_keys": ["ci=test-api-key-1"],
    "admin_api_keys": ["ops=test-admin-key-1"],
}
OLLAMA_ASGI_MODEL_GROUPS = {
    "llm-users": ["llama3.2*", "qwen2.5*"],
    "small-models": ["qwen2.5*"],
}
