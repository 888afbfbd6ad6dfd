from __future__ import annotations

import pytest

from ollama_asgi.errors import ConfigError
from ollama_asgi.specs import ApiKey, BackendSpec


def test_a_backend_spec_built_in_python_is_checked_where_it_is_built() -> None:
    with pytest.raises(ConfigError) as info:
        BackendSpec("ftp://gpu-a", "gpu-a")
    assert info.value.field == "upstreams"
    with pytest.raises(ConfigError) as info:
        BackendSpec("http://gpu-a:11434", "gpu-a", weight=0.0)
    assert info.value.field == "BackendSpec.weight"


def test_an_api_key_built_in_python_holds_a_sha256_digest() -> None:
    with pytest.raises(ConfigError) as info:
        ApiKey(id="ci", sha256="not-a-digest")
    assert info.value.field == "ApiKey.sha256"


def test_a_host_imports_them_from_settings_too_as_the_readme_shows() -> None:
    from ollama_asgi import settings

    assert (settings.ApiKey, settings.BackendSpec) == (ApiKey, BackendSpec)
