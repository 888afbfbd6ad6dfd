"""Configuration mistakes surface in ``manage.py check`` with the name of the setting at fault."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from ollama_asgi import Settings
from ollama_asgi.contrib.django import conf
from ollama_asgi.contrib.django.checks import check_settings, check_tables
from ollama_asgi.contrib.django.principal import DjangoAuthorizer
from ollama_asgi.errors import GatewayError


def test_the_project_settings_pass_the_checks() -> None:
    assert check_settings() == []
    call_command("check", verbosity=0)


@override_settings(OLLAMA_ASGI={"upstreams": "ftp://ollama.internal", "parallel": 2})
def test_a_bad_value_is_reported_as_e001_naming_the_key() -> None:
    [error] = check_settings()
    assert error.id == "ollama_asgi.E001"
    assert "OLLAMA_ASGI['upstreams']" in error.msg and "ftp://ollama.internal" in error.msg


@override_settings(OLLAMA_ASGI={"upstream": "http://127.0.0.1:11434"})
def test_an_unknown_key_is_reported_with_the_closest_valid_one() -> None:
    [error] = check_settings()
    assert "OLLAMA_ASGI['upstream']" in error.msg
    assert "did you mean 'upstreams'" in error.msg


@override_settings(OLLAMA_ASGI=["not", "a", "dict"])
def test_a_setting_that_is_not_a_dict_is_reported() -> None:
    [error] = check_settings()
    assert error.msg.startswith("settings.OLLAMA_ASGI is invalid")


@override_settings(OLLAMA_ASGI_MODEL_GROUPS={"llm-users": "llama3*", "broken": [""]})
def test_bad_model_groups_are_reported_as_e002() -> None:
    [error] = check_settings()
    assert error.id == "ollama_asgi.E002"
    assert "OLLAMA_ASGI_MODEL_GROUPS" in error.msg and "'broken'" in error.msg


@override_settings(OLLAMA_ASGI={"max_queue": -1})
def test_manage_py_check_fails_and_names_the_setting() -> None:
    with pytest.raises(SystemCheckError) as info:
        call_command("check", verbosity=0)
    assert "ollama_asgi.E001" in str(info.value)
    assert "OLLAMA_ASGI['max_queue']" in str(info.value)


def test_a_settings_object_is_accepted_as_is() -> None:
    with override_settings(OLLAMA_ASGI=Settings(parallel=2)):
        assert check_settings() == []
        assert conf.settings().parallel == 2


def test_cached_settings_follow_setting_changes() -> None:
    assert conf.settings().parallel == 1
    with override_settings(OLLAMA_ASGI={"parallel": 3}, OLLAMA_ASGI_MODEL_GROUPS=None):
        assert conf.settings().parallel == 3
        assert conf.model_groups() is None
        assert conf.gateway().settings.parallel == 3
    assert conf.settings().parallel == 1
    assert conf.model_groups() == {"llm-users": ("llama3.2*", "qwen2.5*"), "small-models": ("qwen2.5*",)}


@contextlib.contextmanager
def _without_the_api_key_table() -> Iterator[None]:
    from django.db import connection

    from ollama_asgi.contrib.django.models import ApiKey

    with connection.schema_editor() as editor:
        editor.delete_model(ApiKey)
    try:
        yield
    finally:
        with connection.schema_editor() as editor:
            editor.create_model(ApiKey)


def test_a_migrated_database_passes_the_table_check() -> None:
    assert check_tables() == []


def test_a_database_that_was_never_migrated_is_reported_as_e003() -> None:
    with _without_the_api_key_table():
        [error] = check_tables()
        with pytest.raises(SystemCheckError, match="ollama_asgi.E003"):
            call_command("check", verbosity=0)
    assert error.id == "ollama_asgi.E003" and "migrate" in error.hint


def test_a_bearer_token_without_the_table_is_a_clear_503_not_a_500() -> None:
    authorize = DjangoAuthorizer(Settings(auth="host"))
    scope = {"type": "http", "headers": [(b"authorization", b"Bearer oak_unknown")], "user": None}
    with _without_the_api_key_table(), pytest.raises(GatewayError) as refused:
        asyncio.run(authorize(scope))
    assert refused.value.status == 503 and "migrate" in str(refused.value)
