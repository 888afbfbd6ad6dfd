"""Policy holds against the real server: spellings that Go's decoder folds together do not get round it.

The real server reads ``"Model"``, ``"optionſ"`` (long s) and ``"\u212aeep_alive"`` (Kelvin sign) as
``model``, ``options`` and ``keep_alive``, the last spelling winning; each case first shows what
Ollama does with the spelling directly, then that an ordinary caller gets through the gateway only
what the gateway allows.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from ollama_asgi.testing.real import RealOllama
from tests.conftest import AUTH
from tests.support.rawhttp import wait_until
from tests.support.server import ServerThread

KELVIN_KEEP_ALIVE = "\u212aeep_alive"
LONG_S_OPTIONS = "option\u017f"


@pytest.fixture(scope="module")
def server(start_ollama: Callable[..., RealOllama]) -> RealOllama:
    """One server for the module: each test counts loads and reads /api/ps relative to its own start."""
    return start_ollama(("tiny", "loop"))


def _post(url: str, raw: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(url, content=raw, headers=headers or {}, timeout=60)


def test_a_second_spelling_of_model_cannot_run_a_model_outside_the_allow_list(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    raw = b'{"model":"tiny","Model":"loop","prompt":"x","stream":false,"options":{"num_predict":3}}'
    direct = _post(server.url + "/api/generate", raw)
    assert direct.json()["response"].startswith("one two")  # Ollama answers with the second spelling
    gateway = gateway_for(server, allowed_models=("tiny",))
    loads = server.loads()
    through = _post(gateway.url + "/llm/api/generate", raw, AUTH)
    assert through.status_code == 403 and "loop" in through.json()["error"]
    assert server.loads() == loads


def test_a_kelvin_sign_keep_alive_cannot_unload_a_model(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    gateway = gateway_for(server)
    raw = b'{"model":"tiny","prompt":"x","stream":false,"' + KELVIN_KEEP_ALIVE.encode() + b'":0}'
    assert _post(gateway.url + "/llm/api/generate", raw, AUTH).status_code == 200
    assert "tiny:latest" in server.loaded()
    _post(server.url + "/api/generate", raw)  # the same body sent directly unloads it
    wait_until(lambda: "tiny:latest" not in server.loaded(), timeout=10)


def test_a_long_s_options_cannot_pass_the_num_ctx_cap(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    gateway = gateway_for(server, max_num_ctx=4096)
    raw = b'{"model":"tiny","prompt":"x","stream":false,"' + LONG_S_OPTIONS.encode() + b'":{"num_ctx":12288}}'
    through = _post(gateway.url + "/llm/api/generate", raw, AUTH)
    assert through.status_code == 400 and "num_ctx" in through.json()["error"]
    _, ps = server.request("GET", "/api/ps")
    assert isinstance(ps, dict)
    assert all(m["context_length"] <= 4096 for m in ps["models"])


def test_an_ordinary_callers_runner_options_do_not_reload_the_model(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    gateway = gateway_for(server)
    url = gateway.url + "/llm/api/generate"
    assert httpx.post(url, json={"model": "tiny", "prompt": "x", "stream": False}, headers=AUTH, timeout=60).is_success
    loads = server.loads()
    for options in ({"num_batch": 7}, {"num_thread": 1}, {"use_mmap": False}):
        body = {"model": "tiny", "prompt": "x", "stream": False, "options": options}
        assert httpx.post(url, json=body, headers=AUTH, timeout=60).is_success
    assert server.loads() == loads
    body = {"model": "tiny", "prompt": "x", "stream": False, "options": {"num_batch": 7}}
    httpx.post(server.url + "/api/generate", json=body, timeout=60)  # directly, the same option reloads it
    assert server.loads() == loads + 1
