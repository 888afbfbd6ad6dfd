from __future__ import annotations

import subprocess
import sys

import ollama_asgi


def test_public_names_are_what_we_promise() -> None:
    assert sorted(ollama_asgi.__all__) == ollama_asgi.__all__
    for name in ("OllamaGateway", "Settings", "ConfigError", "Principal", "ApiKey", "PrefixDispatcher", "__version__"):
        assert name in ollama_asgi.__all__
        assert hasattr(ollama_asgi, name)


def test_core_import_pulls_in_no_host_framework() -> None:
    code = (
        "import sys, ollama_asgi, ollama_asgi.gateway, ollama_asgi.testing;"
        "bad = [m for m in ('django', 'starlette', 'litestar') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
