from __future__ import annotations

import sys
import types

import pytest

from ollama_asgi import ApiKey, ConfigError, Settings
from ollama_asgi.settings import parse_duration


def test_defaults_are_usable_without_configuration() -> None:
    settings = Settings()
    assert settings.upstreams == ("http://127.0.0.1:11434",)
    assert settings.auth == "host"
    assert settings.redis_url is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), (2.5, 2.5), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5s", 1.5)],
)
def test_durations_accept_numbers_and_go_style_units(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "-3s", "1h-2m", True, None, "nan"])
def test_bad_durations_are_rejected(text: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text, field="queue_timeout")


def test_from_mapping_is_case_insensitive_and_coerces_strings() -> None:
    settings = Settings.from_mapping(
        {
            "UPSTREAMS": "http://a:11434, http://b:11434/",
            "parallel": "4",
            "queue_timeout": "2m",
            "num_ctx_buckets": [8192, "2048"],
        }
    )
    assert settings.upstreams == ("http://a:11434", "http://b:11434")
    assert settings.parallel == 4
    assert settings.queue_timeout == 120.0
    assert settings.num_ctx_buckets == (2048, 8192)


def test_unknown_key_names_the_key_and_the_closest_valid_one() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"paralel": 2})
    assert info.value.field == "paralel"
    assert "'parallel'" in str(info.value)


def test_validation_error_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"max_queue": -1})
    assert info.value.field == "max_queue"
    assert "max_queue" in str(info.value)


def test_keyword_arguments_are_validated_too() -> None:
    with pytest.raises(ConfigError, match="auth"):
        Settings(auth="password")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="upstreams"):
        Settings(upstreams=("ftp://example",))


def test_ollama_host_style_upstream_gets_a_scheme() -> None:
    assert Settings(upstreams=("127.0.0.1:11434",)).upstreams == ("http://127.0.0.1:11434",)


def test_from_env_reads_prefixed_variables_and_lists() -> None:
    env = {
        "OLLAMA_ASGI_UPSTREAMS": "http://x:1,http://y:2",
        "OLLAMA_ASGI_API_KEYS": "ci=secret-key-1,another-secret",
        "OLLAMA_ASGI_AUTH": "api_key",
        "OLLAMA_ASGI_MAX_BODY_BYTES": "2MiB",
        "UNRELATED": "x",
    }
    settings = Settings.from_env(environ=env)
    assert settings.upstreams == ("http://x:1", "http://y:2")
    assert settings.auth == "api_key"
    assert [k.id for k in settings.api_keys] == ["ci", f"key-{ApiKey.digest('another-secret')[:8]}"]
    assert settings.max_body_bytes == 2 * 1024 * 1024


def test_from_env_rejects_unknown_prefixed_variable_with_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ={"OLLAMA_ASGI_UPSTREAM": "http://x"})
    assert info.value.field == "OLLAMA_ASGI_UPSTREAM"
    assert "OLLAMA_ASGI_UPSTREAMS" in str(info.value)


def test_from_env_falls_back_to_ollama_host() -> None:
    assert Settings.from_env(environ={"OLLAMA_HOST": "10.0.0.5:11434"}).upstreams == ("http://10.0.0.5:11434",)


def test_from_module_reads_the_named_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("fake_host_settings")
    module.OLLAMA_ASGI = {"parallel": 3, "auth": "none"}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_host_settings", module)
    settings = Settings.from_module("fake_host_settings")
    assert (settings.parallel, settings.auth) == (3, "none")
    with pytest.raises(ConfigError, match="has no LLM setting"):
        Settings.from_module("fake_host_settings", attr="LLM")
    with pytest.raises(ConfigError, match="cannot import"):
        Settings.from_module("no.such.module")


def test_api_keys_keep_only_a_digest() -> None:
    settings = Settings(api_keys=("bot=super-secret-value",))  # type: ignore[arg-type]
    key = settings.api_keys[0]
    assert key.id == "bot"
    assert "super-secret-value" not in repr(settings)
    assert key.sha256 == ApiKey.digest("super-secret-value")


def test_api_key_mapping_form_and_hashed_form() -> None:
    digest = ApiKey.digest("machine-key-123")
    settings = Settings.from_mapping(
        {
            "api_keys": [{"id": "etl", "key_sha256": digest, "models": ["nomic-embed-text"]}],
            "admin_api_keys": {"ops": "ops-secret-999"},
        }
    )
    assert settings.api_keys[0].models == ("nomic-embed-text",)
    assert settings.api_keys[0].sha256 == digest
    assert settings.admin_api_keys[0].admin is True


def test_short_api_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 8"):
        Settings(api_keys=("short",))  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.parallel = 3  # type: ignore[misc]
    assert settings.replace(parallel=3).parallel == 3


def test_every_setting_is_described() -> None:
    assert set(Settings.describe()) == set(Settings.field_names())
    assert all(Settings.describe().values())


def test_the_readme_documents_every_setting() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [name for name in Settings.field_names() if f"| `{name}` |" not in readme]
    assert not missing, f"README.md's settings table lacks {missing}"


def test_runner_options_are_read_from_pairs_with_ollamas_types() -> None:
    settings = Settings.from_env(environ={"OLLAMA_ASGI_RUNNER_OPTIONS": "num_thread=8, use_mmap=false"})
    assert settings.runner_options == (("num_thread", 8), ("use_mmap", False))


@pytest.mark.parametrize("value", [{"temperature": 1}, {"num_ctx": 4096}, "num_thread=many", {"use_mmap": "maybe"}])
def test_runner_options_accept_only_runner_options_of_their_type(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(runner_options=value)  # type: ignore[arg-type]
    assert info.value.field == "runner_options"
