from __future__ import annotations

import sys
import types

import pytest

from ollama_asgi import ApiKey, ConfigError, Settings
from ollama_asgi.specs import BackendSpec


def test_defaults_are_usable_without_configuration() -> None:
    settings = Settings()
    assert settings.upstreams == ("http://127.0.0.1:11434",)
    assert settings.auth == "host"
    assert settings.redis_url is None


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
    settings = Settings.from_mapping({"api_keys": ["bot=super-secret-value"]})
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
        Settings.from_mapping({"api_keys": ["short"]})
    with pytest.raises(ConfigError, match="at least 8"):
        ApiKey.parse("short")


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
        Settings.from_mapping({"runner_options": value})
    assert info.value.field == "runner_options"


@pytest.mark.parametrize(
    "pairs", [(("temperature", 1),), (("num_ctx", 4096),), (("use_mmap", 1),), (("num_thread", True),)]
)
def test_typed_runner_options_are_held_to_ollamas_kinds_too(pairs: tuple[tuple[str, int | bool], ...]) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(runner_options=pairs)
    assert info.value.field == "runner_options"


# -- the declared types are what Settings(...) takes ------------------------------------------------


def test_keyword_arguments_take_their_declared_types_not_text() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(parallel="4")  # type: ignore[arg-type]
    assert info.value.field == "parallel"
    assert "from_mapping" in str(info.value)


def test_api_keys_from_python_are_api_key_objects() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(api_keys=("ci=secret-key-1",))  # type: ignore[arg-type]
    assert info.value.field == "api_keys"
    assert Settings(api_keys=(ApiKey.parse("ci=secret-key-1"),)).api_keys[0].id == "ci"


def test_keyword_arguments_are_held_to_their_bounds() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(parallel=0)
    assert info.value.field == "parallel"
    assert "got 0" in str(info.value)


def test_an_int_for_a_float_setting_reads_back_as_a_float() -> None:
    assert type(Settings(queue_timeout=30).queue_timeout) is float


def test_a_key_in_admin_api_keys_is_an_admin_key_however_it_was_built() -> None:
    settings = Settings(admin_api_keys=(ApiKey.parse("ops=ops-secret-key"),))
    assert settings.admin_api_keys[0].admin is True


def test_named_backends_are_given_from_python_as_backend_specs() -> None:
    settings = Settings(
        backends=(BackendSpec("http://gpu-a:11434/", "gpu-a", weight=2.0), BackendSpec("gpu-b:11434", "gpu-b"))
    )
    assert settings.upstreams == ("http://gpu-a:11434", "http://gpu-b:11434")
    assert [b.name for b in settings.backends] == ["gpu-a", "gpu-b"]


def test_replace_keeps_the_backends_unless_the_upstreams_change() -> None:
    settings = Settings.from_mapping({"upstreams": [{"url": "http://a:1", "name": "gpu"}]})
    assert settings.replace(parallel=2).backends == settings.backends
    assert [b.name for b in settings.replace(upstreams=("http://b:2",)).backends] == ["backend-0"]


def test_upstreams_and_backends_that_disagree_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(upstreams=("http://a:1",), backends=(BackendSpec("http://b:2", "b"),))
    assert info.value.field == "backends"


@pytest.fixture(scope="module")
def mypy_on_calls(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What strict mypy says of a host's Settings(...) calls: one right, one misspelt, one mistyped."""

    from mypy import api

    work = tmp_path_factory.mktemp("mypy")
    (work / "calls.py").write_text(
        "from ollama_asgi.settings import Settings\n"
        "right = Settings(parallel=4, queue_timeout=2.5, upstreams=('http://a:1',), auth='api_key')\n"
        "misspelt = Settings(paralel=4)\n"
        "mistyped = Settings(parallel='4')\n"
    )
    # Only Settings and the types it declares are followed: the rest of the package is not checked here.
    (work / "mypy.ini").write_text(
        "[mypy]\nstrict = True\n[mypy-ollama_asgi.*]\nfollow_imports = skip\n"
        "[mypy-ollama_asgi.settings,ollama_asgi.settings_types,ollama_asgi.settings_text,ollama_asgi.specs]\n"
        "follow_imports = normal\n"
    )
    stdout, stderr, _ = api.run(
        ["--config-file", str(work / "mypy.ini"), "--cache-dir", str(work / "cache"), str(work / "calls.py")]
    )
    return stdout + stderr


def test_a_type_checker_accepts_a_well_typed_settings_call(mypy_on_calls: str) -> None:
    assert "calls.py:2:" not in mypy_on_calls, mypy_on_calls
    assert "Found 2 errors in 1 file" in mypy_on_calls, mypy_on_calls


def test_a_type_checker_rejects_a_misspelt_setting(mypy_on_calls: str) -> None:
    assert 'calls.py:3: error: Unexpected keyword argument "paralel"' in mypy_on_calls, mypy_on_calls


def test_a_type_checker_rejects_text_for_a_number(mypy_on_calls: str) -> None:
    assert 'calls.py:4: error: Argument "parallel" to "Settings" has incompatible type "str"' in mypy_on_calls, (
        mypy_on_calls
    )


# -- the loaders read text into those types ----------------------------------------------------------


def test_from_env_reads_json_lists_of_backend_entries() -> None:
    env = {"OLLAMA_ASGI_UPSTREAMS": '[{"url": "http://a:1", "name": "gpu", "weight": 2, "vram_budget": "8GiB"}, "b:2"]'}
    settings = Settings.from_env(environ=env)
    assert settings.upstreams == ("http://a:1", "http://b:2")
    assert (settings.backends[0].name, settings.backends[0].weight) == ("gpu", 2.0)
    assert settings.backends[0].vram_budget == 8 * 1024**3


def test_from_env_reads_words_for_booleans_and_units_for_durations_and_sizes() -> None:
    env = {"OLLAMA_ASGI_LIFECYCLE": "off", "OLLAMA_ASGI_LEASE_TTL": "1m30s", "OLLAMA_ASGI_VRAM_BUDGET": "24GiB"}
    settings = Settings.from_env(environ=env)
    assert (settings.lifecycle, settings.lease_ttl, settings.vram_budget) == (False, 90.0, 24 * 1024**3)


def test_from_mapping_reads_a_number_as_keep_alive_seconds() -> None:
    assert Settings.from_mapping({"keep_alive": 300}).keep_alive == "300s"
    assert Settings.from_mapping({"keep_alive": -1}).keep_alive == "-1s"


@pytest.mark.parametrize(
    ("data", "closest"),
    [
        ({"upstreams": [{"url": "http://a:1", "wieght": 2}]}, "'weight'"),
        ({"api_keys": [{"key": "secret-key-1", "modles": ["m"]}]}, "'models'"),
        ({"runner_options": "num_threads=8"}, "'num_thread'"),
    ],
)
def test_an_unknown_key_inside_a_setting_names_it_and_the_closest_valid_one(
    data: dict[str, object], closest: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping(data)
    assert info.value.field == next(iter(data))
    assert closest in str(info.value)


def test_a_loader_value_error_names_the_setting() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ={"OLLAMA_ASGI_QUEUE_TIMEOUT": "soon"})
    assert info.value.field == "queue_timeout"
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"upstreams": [{"url": "http://a:1", "weight": 0}]})
    assert info.value.field == "upstreams"
    assert "weight" in str(info.value)


def test_from_mapping_reads_a_whole_float_as_an_integer() -> None:
    assert Settings.from_mapping({"parallel": 2.0}).parallel == 2
    with pytest.raises(ConfigError, match="parallel"):
        Settings.from_mapping({"parallel": 2.5})


def test_replace_with_backends_reads_back_their_urls() -> None:
    settings = Settings().replace(backends=(BackendSpec("http://gpu-a:11434", "gpu-a"),))
    assert settings.upstreams == ("http://gpu-a:11434",)
