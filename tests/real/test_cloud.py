"""Cloud models and the account routes against the real server (run with ``OLLAMA_NO_CLOUD=1``).

Each case shows what Ollama itself answers, then what the gateway does: refuse before Ollama sees
the request, or, where allowed, relay Ollama's own answer without loading anything.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from ollama_asgi.testing.real import RealOllama
from tests.conftest import ADMIN, AUTH
from tests.support.rawhttp import wait_until
from tests.support.server import ServerThread

CLOUD = "gpt-oss:120b:cloud"  # the form the gateway's name check used to refuse with a 400


@pytest.fixture(scope="module")
def server(start_ollama: Callable[..., RealOllama]) -> RealOllama:
    return start_ollama(("tiny",))


def _seen(server: RealOllama, path: str) -> int:
    """Requests for ``path`` in the server's request log."""
    return sum(1 for line in server.log().splitlines() if line.startswith("[GIN]") and f'"{path}"' in line)


def _logged(server: RealOllama, path: str, count: int) -> int:
    """Wait until ``count`` requests for ``path`` are logged (gin logs after it answers)."""
    wait_until(lambda: _seen(server, path) >= count, timeout=10)
    return _seen(server, path)


def _generate(url: str, model: str, headers: dict[str, str]) -> httpx.Response:
    body = {"model": model, "prompt": "x", "stream": False}
    return httpx.post(url + "/api/generate", json=body, headers=headers, timeout=60)


def test_a_cloud_model_is_refused_by_the_gateway_before_ollama_sees_it(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    before = _seen(server, "/api/generate")
    direct = _generate(server.url, CLOUD, {})
    assert direct.status_code == 403 and "ollama cloud is disabled" in direct.json()["error"]
    seen = _logged(server, "/api/generate", before + 1)
    gateway = gateway_for(server)
    through = _generate(gateway.url + "/llm", CLOUD, AUTH)
    assert through.status_code == 403
    assert CLOUD in through.json()["error"] and "cloud_models" in through.json()["error"]
    _generate(server.url, CLOUD, {})  # logged after anything the gateway had sent
    assert _logged(server, "/api/generate", seen + 1) == seen + 1


@pytest.mark.parametrize("model", [CLOUD, "gpt-oss:cloud", "gpt-oss:120b-cloud"])
def test_an_allowed_cloud_model_reaches_ollama_without_a_load(
    server: RealOllama, gateway_for: Callable[..., ServerThread], model: str
) -> None:
    gateway = gateway_for(server, cloud_models=True)
    loads = server.loads()
    through = _generate(gateway.url + "/llm", model, AUTH)
    assert through.status_code == 403  # Ollama's own refusal: its cloud is off
    assert through.json()["error"] == "ollama cloud is disabled: remote model is unavailable"
    assert server.loads() == loads


def test_status_is_ollamas_where_cloud_models_are_allowed_and_the_gateways_otherwise(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    assert server.request("GET", "/api/status") == (200, {"cloud": {"disabled": True, "source": "env"}})
    allowed = gateway_for(server, cloud_models=True)
    assert httpx.get(allowed.url + "/llm/api/status", headers=AUTH).json() == {
        "cloud": {"disabled": True, "source": "env"}
    }
    refused = gateway_for(server)
    assert httpx.get(refused.url + "/llm/api/status", headers=AUTH).json() == {
        "cloud": {"disabled": True, "source": "config"}
    }


def test_the_account_routes_reach_ollama_only_for_an_allowed_admin(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    assert server.request("POST", "/api/me")[0] == 503  # "account unavailable": never signed in
    seen = _logged(server, "/api/me", 1)
    assert httpx.post(gateway_for(server).url + "/llm/api/me", headers=ADMIN).status_code == 403
    allowed = gateway_for(server, cloud_account_routes=True)
    assert httpx.post(allowed.url + "/llm/api/me", headers=AUTH).status_code == 403
    assert _seen(server, "/api/me") == seen
    through = httpx.post(allowed.url + "/llm/api/me", headers=ADMIN)
    assert through.status_code == 503 and through.json() == {"error": "account unavailable"}
    assert _logged(server, "/api/me", seen + 1) == seen + 1


def test_a_local_suffix_uses_the_loaded_model_without_another_load(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    gateway = gateway_for(server, allowed_models=("tiny",))
    body = {"model": "tiny:local", "prompt": "x", "stream": False, "options": {"num_predict": 2}}
    url = gateway.url + "/llm/api/generate"
    assert httpx.post(url, json=body, headers=AUTH, timeout=60).status_code == 200
    seen = _logged(server, "/api/generate", 1)
    assert httpx.post(url, json=body, headers=AUTH, timeout=60).status_code == 200
    _generate(server.url, CLOUD, {})  # logged after anything the gateway had sent
    assert _logged(server, "/api/generate", seen + 2) == seen + 2  # the request and this one: no load


def test_a_cloud_models_details_are_refused_before_ollama_asks_ollama_com(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    path = "/v1/models/gpt-oss:120b-cloud"
    direct = httpx.get(server.url + path, timeout=60)
    assert direct.status_code == 403 and "ollama cloud is disabled" in direct.text
    seen = _logged(server, path, 1)
    through = httpx.get(gateway_for(server).url + "/llm" + path, headers=AUTH, timeout=60)
    assert through.status_code == 403 and "cloud_models" in through.json()["error"]["message"]
    httpx.get(server.url + path, timeout=60)  # logged after anything the gateway had sent
    assert _logged(server, path, seen + 1) == seen + 1


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_an_allowed_cloud_model_on_the_compatible_routes_gets_ollamas_own_answer(
    server: RealOllama, gateway_for: Callable[..., ServerThread], path: str
) -> None:
    body: dict[str, object] = {"model": "gpt-oss:120b-cloud", "max_tokens": 8}
    if path == "/v1/responses":
        body["input"] = "x"
    else:
        body["messages"] = [{"role": "user", "content": "x"}]
    direct = httpx.post(server.url + path, json=body, timeout=60)
    through = httpx.post(
        gateway_for(server, cloud_models=True).url + "/llm" + path, json=body, headers=AUTH, timeout=60
    )
    assert direct.status_code == 403
    assert (through.status_code, through.json()) == (direct.status_code, direct.json())
