"""Cloud models (``m:cloud``, ``m:tag:cloud``, ``m:tag-cloud``), which Ollama relays to ollama.com.

They are refused unless a setting or the principal allows them, before anything reaches Ollama;
when allowed they are relayed as the client sent them: nothing is loaded and no ``num_ctx`` or
``keep_alive`` of the gateway's is added. The routes that act as the server's ollama.com account
are refused unless allowed, and then to administrators only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from ollama_asgi import OllamaGateway, Settings
from ollama_asgi.auth import Principal, user_principal
from ollama_asgi.model_names import canonical_model, check_model_name, is_cloud_model
from ollama_asgi.protocol import parse_request
from ollama_asgi.routing import match_route
from ollama_asgi.testing import EmulatorServer
from ollama_asgi.testing.models import EmulatedModel
from tests.conftest import ADMIN, AUTH
from tests.support.hosts import starlette_host
from tests.support.server import ServerThread

CLOUD_NAMES = ("gpt-oss:cloud", "gpt-oss:120b:cloud", "gpt-oss:120b-cloud", "library/gpt-oss:20B-Cloud")


@pytest.mark.parametrize("name", CLOUD_NAMES)
def test_cloud_names_pass_the_model_name_check(name: str) -> None:
    assert check_model_name(name) == name and is_cloud_model(name)


@pytest.mark.parametrize("name", ("gpt-oss:120b:local", "gpt-oss:local", "host:11434/m", "cloud", "m:tag-cloud:local"))
def test_local_and_unsuffixed_names_are_not_cloud_models(name: str) -> None:
    assert not is_cloud_model(name)


def test_both_source_suffixes_are_refused_as_ollama_refuses_them() -> None:
    route = match_route("/api/generate")
    assert route is not None
    with pytest.raises(Exception, match="use either :local or :cloud, not both"):
        parse_request(route, b'{"model":"m:cloud:local","prompt":"x"}', max_num_ctx=8192)


def test_a_parsed_request_says_whether_its_model_is_a_cloud_model() -> None:
    route = match_route("/api/chat")
    assert route is not None
    assert parse_request(route, b'{"model":"m:7b:cloud"}', max_num_ctx=8192).cloud
    assert not parse_request(route, b'{"model":"m:7b"}', max_num_ctx=8192).cloud


def test_cloud_models_are_refused_by_default_before_reaching_ollama(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    server = host_factory()
    before = len(emulator.emulator.requests)
    body = {"model": "gpt-oss:120b:cloud", "prompt": "secret", "stream": False}
    response = httpx.post(server.url + "/llm/api/generate", json=body, headers=AUTH)
    assert response.status_code == 403
    error = response.json()["error"]
    assert "gpt-oss:120b:cloud" in error and "cloud_models" in error
    assert len(emulator.emulator.requests) == before


def test_cloud_models_are_refused_on_the_openai_routes_too(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory()
    body = {"model": "gpt-oss:120b-cloud", "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(server.url + "/llm/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 403 and "cloud_models" in response.json()["error"]["message"]


def test_an_allowed_cloud_model_is_relayed_without_a_load_or_num_ctx(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    server = host_factory(cloud_models=True)
    before = len(emulator.emulator.requests)
    body = {"model": "gpt-oss:cloud", "prompt": "x", "stream": False}
    httpx.post(server.url + "/llm/api/generate", json=body, headers=AUTH, timeout=30)
    sent = [r for r in emulator.emulator.requests[before:] if r.path != "/"]  # "/": the health probe
    assert [r.path for r in sent] == ["/api/generate"]  # no /api/show, no load request
    assert sent[0].json == body  # no num_ctx, no keep_alive


def test_the_allow_list_still_applies_to_an_allowed_cloud_model(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(cloud_models=True, allowed_models=("llama*",))
    body = {"model": "gpt-oss:cloud", "prompt": "x", "stream": False}
    assert httpx.post(server.url + "/llm/api/generate", json=body, headers=AUTH).status_code == 403


def test_a_principal_may_be_allowed_cloud_models_the_setting_refuses(emulator: EmulatorServer) -> None:
    gateway = OllamaGateway(
        Settings(upstreams=(emulator.url,)),
        authorize=lambda scope: Principal(id="researcher", cloud_models=True),
    )
    server = ServerThread(starlette_host(gateway)).start()
    try:
        before = len(emulator.emulator.requests)
        body = {"model": "gpt-oss:cloud", "prompt": "x", "stream": False}
        httpx.post(server.url + "/llm/api/generate", json=body, timeout=30)
        assert [r.path for r in emulator.emulator.requests[before:] if r.path != "/"] == ["/api/generate"]
    finally:
        server.stop()


def test_a_host_users_ollama_cloud_models_sets_the_principals_cloud_models() -> None:
    allowed = user_principal({"username": "ann", "ollama_cloud_models": True})
    unset = user_principal({"username": "bob"})
    assert allowed is not None and allowed.cloud_models is True
    assert unset is not None and unset.cloud_models is None


ACCOUNT_ROUTES = [
    ("POST", "/api/me"),
    ("POST", "/api/signout"),
    ("DELETE", "/api/user/keys/c3NoLWVkMjU1MTk"),
    ("POST", "/api/experimental/web_search"),
    ("POST", "/api/experimental/web_fetch"),
]


@pytest.mark.parametrize(("method", "path"), ACCOUNT_ROUTES)
def test_account_routes_are_refused_even_to_admins_by_default(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer, method: str, path: str
) -> None:
    server = host_factory()
    before = len(emulator.emulator.requests)
    response = httpx.request(method, server.url + "/llm" + path, content=b'{"query":"x"}', headers=ADMIN)
    assert response.status_code == 403 and "cloud_account_routes" in response.json()["error"]
    assert [r for r in emulator.emulator.requests[before:] if r.path != "/"] == []


@pytest.mark.parametrize(("method", "path"), ACCOUNT_ROUTES)
def test_account_routes_stay_refused_to_non_admins_when_allowed(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer, method: str, path: str
) -> None:
    server = host_factory(cloud_account_routes=True)
    before = len(emulator.emulator.requests)
    response = httpx.request(method, server.url + "/llm" + path, content=b'{"query":"x"}', headers=AUTH)
    assert response.status_code == 403
    assert [r for r in emulator.emulator.requests[before:] if r.path != "/"] == []


def test_an_allowed_admin_reaches_ollamas_account_routes(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    server = host_factory(cloud_account_routes=True)
    before = len(emulator.emulator.requests)
    httpx.post(server.url + "/llm/api/experimental/web_search", json={"query": "x"}, headers=ADMIN)
    assert [r.path for r in emulator.emulator.requests[before:] if r.path != "/"] == ["/api/experimental/web_search"]


def test_status_says_cloud_is_disabled_where_the_gateway_refuses_cloud_models(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    server = host_factory()
    before = len(emulator.emulator.requests)
    response = httpx.get(server.url + "/llm/api/status", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"cloud": {"disabled": True, "source": "config"}}
    assert [r for r in emulator.emulator.requests[before:] if r.path != "/"] == []


def test_status_is_ollamas_own_where_cloud_models_are_allowed(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    server = host_factory(cloud_models=True)
    before = len(emulator.emulator.requests)
    httpx.get(server.url + "/llm/api/status", headers=AUTH)
    assert [r.path for r in emulator.emulator.requests[before:] if r.path != "/"] == ["/api/status"]


def test_status_needs_a_caller(host_factory: Callable[..., ServerThread]) -> None:
    assert httpx.get(host_factory().url + "/llm/api/status").status_code == 401


def test_an_api_key_entry_may_allow_cloud_models(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    key = {"id": "research", "key": "research-key-1", "cloud_models": True}
    server = host_factory(api_keys=(key,))
    before = len(emulator.emulator.requests)
    body = {"model": "gpt-oss:cloud", "prompt": "x", "stream": False}
    httpx.post(server.url + "/llm/api/generate", json=body, headers={"Authorization": "Bearer research-key-1"})
    assert [r.path for r in emulator.emulator.requests[before:] if r.path != "/"] == ["/api/generate"]


@pytest.mark.parametrize(("name", "canonical"), [("tiny:local", "tiny:latest"), ("Tiny:7B:LOCAL", "tiny:7b")])
def test_a_local_suffix_names_the_same_model_as_without_it(name: str, canonical: str) -> None:
    assert canonical_model(name) == canonical


def test_an_allow_list_admits_a_model_named_with_the_local_suffix(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(allowed_models=("llama3.2",))
    body = {"model": "llama3.2:local", "prompt": "x", "stream": False, "options": {"num_predict": 2}}
    response = httpx.post(server.url + "/llm/api/generate", json=body, headers=AUTH, timeout=30)
    assert response.status_code != 403  # the emulator knows no :local, the policy admits it


def test_a_cloud_models_details_are_refused_like_the_model(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    server = host_factory()
    before = len(emulator.emulator.requests)
    response = httpx.get(server.url + "/llm/v1/models/gpt-oss:120b-cloud", headers=AUTH)
    assert response.status_code == 403 and "cloud_models" in response.json()["error"]["message"]
    assert [r for r in emulator.emulator.requests[before:] if r.path != "/"] == []


async def test_a_cloud_request_takes_no_slot_of_the_local_runners(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.05
    server = host_factory(cloud_models=True, parallel=1, max_queue=0)
    local = {"model": "llama3.2", "prompt": "w", "stream": False, "options": {"num_predict": 20}}
    cloud = {"model": "gpt-oss:cloud", "prompt": "w", "stream": False}
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=60) as client:
        long = asyncio.ensure_future(client.post("/api/generate", json=local))
        await asyncio.sleep(0.3)
        assert (await client.post("/api/generate", json=local)).status_code == 503  # the one slot is taken
        relayed = await client.post("/api/generate", json=cloud)
        assert relayed.status_code != 503 and "gpt-oss" in relayed.text  # the emulator's own answer
        assert (await long).status_code == 200


def test_rate_limits_apply_to_cloud_requests(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(cloud_models=True, rate_limit_rpm=1)
    body = {"model": "gpt-oss:cloud", "prompt": "x", "stream": False}
    httpx.post(server.url + "/llm/api/generate", json=body, headers=AUTH)
    assert httpx.post(server.url + "/llm/api/generate", json=body, headers=AUTH).status_code == 429


def test_listings_show_cloud_models_only_to_callers_who_may_use_them(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    emulator.emulator.store.add(EmulatedModel("gpt-oss:120b-cloud", size=384))
    try:
        for settings, shown in (({}, False), ({"cloud_models": True}, True)):
            server = host_factory(**settings)
            tags = httpx.get(server.url + "/llm/api/tags", headers=AUTH, timeout=15).json()["models"]
            models = httpx.get(server.url + "/llm/v1/models", headers=AUTH, timeout=15).json()["data"]
            assert ("gpt-oss:120b-cloud" in [m["name"] for m in tags]) is shown
            assert ("gpt-oss:120b-cloud" in [m["id"] for m in models]) is shown
            assert any(m["name"].startswith("llama3.2") for m in tags)  # the local models stay listed
    finally:
        emulator.emulator.store.remove("gpt-oss:120b-cloud")
