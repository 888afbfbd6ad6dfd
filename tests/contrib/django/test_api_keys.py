"""API keys stored in the Django database: created by a command or the admin, secret shown once."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import ollama
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from ollama_asgi.contrib.django.models import ApiKey
from tests.hosts.base import Host

CHAT = [{"role": "user", "content": "one two three"}]


def create_key(name: str, *args: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    call_command("ollama_api_key", name, *args, stdout=out, stderr=err)
    assert "not be shown again" in err.getvalue()
    return out.getvalue().strip()


@pytest.fixture
def keys() -> Iterator[None]:
    yield
    ApiKey.objects.all().delete()


def test_the_command_prints_a_secret_that_is_stored_only_as_a_digest(keys: None) -> None:
    secret = create_key("robot")
    key = ApiKey.objects.get(name="robot")
    assert secret.startswith(key.prefix) and len(secret) > 40
    assert key.digest == ApiKey.digest_of(secret) and secret not in key.digest
    with pytest.raises(CommandError, match="--rotate"):
        create_key("robot")
    assert create_key("robot", "--rotate") != secret


def test_a_database_key_streams_a_chat(django_host: Host, keys: None) -> None:
    client = django_host.with_key(create_key("robot"))
    text = "".join(part.message.content or "" for part in client.chat(model="llama3.2", messages=CHAT, stream=True))
    assert text.startswith("one two three")


def test_a_database_key_keeps_to_its_models_and_role(django_host: Host, keys: None) -> None:
    client = django_host.with_key(create_key("small", "--models", "qwen2.5*"))
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="llama3.2", messages=CHAT)
    assert info.value.status_code == 403 and "llama3.2" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.pull("qwen2.5:0.5b")
    assert info.value.status_code == 403
    assert django_host.with_key(create_key("ops-robot", "--admin")).pull("qwen2.5:0.5b").status == "success"


def test_a_deactivated_key_gets_401(django_host: Host, keys: None) -> None:
    secret = create_key("robot")
    ApiKey.objects.filter(name="robot").update(is_active=False)
    with pytest.raises(ollama.ResponseError) as info:
        django_host.with_key(secret).list()
    assert info.value.status_code == 401


def test_the_admin_shows_a_new_secret_once(keys: None) -> None:
    admin = User.objects.create_superuser("keeper", password="keeper-password")
    try:
        browser = Client()
        browser.force_login(admin)
        response = browser.post(
            "/admin/ollama_asgi/apikey/add/",
            {"name": "from-admin", "allowed_models": "", "is_active": "on"},
            follow=True,
        )
        assert response.status_code == 200
        shown = re.search(r"is (oak_[\w-]+)", response.content.decode())
        assert shown is not None
        assert ApiKey.objects.get(name="from-admin").digest == ApiKey.digest_of(shown.group(1))
        assert shown.group(1) not in browser.get("/admin/ollama_asgi/apikey/").content.decode()
    finally:
        admin.delete()
