"""Bad input gets a clear 4xx with an Ollama-shaped body (OpenAI-shaped under /v1); never a 500."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_asgi.testing import EmulatorServer, Fault
from tests.conftest import ADMIN, AUTH
from tests.support.processes import free_port
from tests.support.rawhttp import request, wait_until
from tests.support.server import ServerThread


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/api/chat", b"{nope", 400, "invalid JSON"),
        ("POST", "/api/chat", b"", 400, "missing request body"),
        ("POST", "/api/chat", b'{"messages": []}', 400, "model is required"),
        ("POST", "/api/generate", b'{"model": "m", "stream": 1}', 400, "stream must be a boolean"),
        ("POST", "/api/generate", b'{"model": "m", "options": {"num_ctx": 10000000}}', 400, "num_ctx must be between"),
        ("POST", "/api/generate", b'{"model": "m", "options": {"num_ctx": -5}}', 400, "num_ctx must be between"),
        ("POST", "/api/generate", b'{"model": "a/../../b"}', 400, "invalid model name"),
        ("POST", "/api/generate", b'{"model": "no-such-model", "prompt": "x"}', 404, "not found"),
        ("GET", "/api/chat", b"", 405, "method not allowed"),
        ("POST", "/api/nothing", b"{}", 404, "page not found"),
    ],
)
def test_bad_requests_get_ollama_shaped_errors(
    llm_url: str, method: str, path: str, body: bytes, status: int, message: str
) -> None:
    response = httpx.request(method, llm_url + path, content=body, headers=AUTH)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    "path", ["/api/../api/pull", "/api/%2e%2e/api/pull", "//api/pull", "/API/PULL", "/api/pull/.", "/api/blobs/../pull"]
)
def test_path_tricks_never_reach_management_endpoints(llm_url: str, emulator, path: str) -> None:  # type: ignore[no-untyped-def]
    response = request(llm_url + path, body=b'{"model": "llama3.2"}', headers=AUTH)
    assert response.status in (403, 404)
    assert b"error" in b"".join(response.chunks())
    assert not [r for r in emulator.emulator.requests if r.path.endswith("pull")]


def test_openai_routes_answer_openai_shaped_errors(llm_url: str) -> None:
    response = httpx.post(llm_url + "/v1/chat/completions", content=b"{bad", headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "invalid JSON" in error["message"]
    assert httpx.get(llm_url + "/v1/models").json()["error"]["type"] == "authentication_error"


def test_unauthenticated_requests_get_401_with_a_challenge(llm_url: str) -> None:
    response = httpx.post(llm_url + "/api/chat", content=b'{"model": "llama3.2"}')
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json() == {"error": "authentication required"}


def test_api_key_in_the_query_string_is_not_accepted(llm_url: str) -> None:
    assert httpx.get(llm_url + "/api/tags?api_key=test-api-key-1").status_code == 401


def test_oversized_bodies_get_413_before_reaching_ollama(host_factory: Callable[..., ServerThread], emulator) -> None:  # type: ignore[no-untyped-def]
    server = host_factory(max_body_bytes=1024)
    body = json.dumps({"model": "llama3.2", "prompt": "x" * 5000}).encode()
    response = httpx.post(server.url + "/llm/api/generate", content=body, headers=AUTH)
    assert response.status_code == 413
    assert "1024 bytes" in response.json()["error"]

    def chunked():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b" " * 500  # no Content-Length: the limit is enforced while reading

    response = httpx.post(server.url + "/llm/api/generate", content=chunked(), headers=AUTH)
    assert response.status_code == 413
    assert not [r for r in emulator.emulator.requests if r.path == "/api/generate"]


def test_model_allow_lists_answer_403_naming_the_model(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(api_keys=({"id": "embedder", "key": "embed-only-key", "models": ["nomic-embed-text"]},))
    headers = {"Authorization": "Bearer embed-only-key"}
    ok = httpx.post(server.url + "/llm/api/embed", json={"model": "nomic-embed-text", "input": "x"}, headers=headers)
    assert ok.status_code == 200
    denied = httpx.post(server.url + "/llm/api/chat", json={"model": "llama3.2", "messages": []}, headers=headers)
    assert denied.status_code == 403
    assert "'llama3.2'" in denied.json()["error"]


def test_health_reports_reachable_backends_without_auth(llm_url: str) -> None:
    health = httpx.get(llm_url + "/_gateway/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "backends": [{"name": "backend-0", "up": True, "breaker": "closed", "draining": False}],
    }


def test_auth_none_must_be_explicit_and_still_closes_management(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(auth="none")
    assert httpx.get(server.url + "/llm/api/tags").status_code == 200
    assert httpx.post(server.url + "/llm/api/pull", json={"model": "x"}).status_code == 403


def _bounded(body: dict[str, object]) -> dict[str, object]:
    """Keep generated answers short: a random num_predict of 10**18 is valid and would take forever."""
    options = body.get("options")
    if isinstance(options, dict) and isinstance(options.get("num_predict"), int | float):
        options["num_predict"] = min(options["num_predict"], 50)
    return body


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_bodies = st.one_of(
    st.binary(max_size=300),
    _json.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"model": st.sampled_from(["llama3.2", "qwen2.5:0.5b", "nomic-embed-text", "x/y", ""]) | st.text(max_size=12)},
        optional={
            "stream": _json,
            "options": st.dictionaries(st.sampled_from(["num_ctx", "num_predict", "temperature", "top_k"]), _json),
            "keep_alive": _json,
            "messages": _json,
            "prompt": _json,
            "input": _json,
        },
    ).map(lambda v: json.dumps(_bounded(v)).encode()),
)
_paths = st.sampled_from(
    [
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/api/pull",
        "/api/delete",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=_paths, body=_bodies)
def test_random_bodies_never_get_a_500(llm_url: str, path: str, body: bytes) -> None:
    method = "DELETE" if path == "/api/delete" else "POST"
    # Short answers keep the run fast; the emulator would happily generate forever otherwise.
    response = httpx.request(method, llm_url + path, content=body, headers=AUTH, timeout=30)
    assert response.status_code != 500 and response.status_code < 502, (response.status_code, response.text)
    if response.status_code >= 400:
        payload = response.json()
        assert "error" in payload


def test_listings_show_only_the_models_a_caller_may_use(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(api_keys=({"id": "embedder", "key": "embed-only-key", "models": ["nomic-embed-text"]},))
    headers = {"Authorization": "Bearer embed-only-key"}
    tags = httpx.get(server.url + "/llm/api/tags", headers=headers).json()["models"]
    assert [m["model"] for m in tags] == ["nomic-embed-text:latest"]
    ids = [m["id"] for m in httpx.get(server.url + "/llm/v1/models", headers=headers).json()["data"]]
    assert ids == ["nomic-embed-text:latest"]
    everyone = httpx.get(server.url + "/llm/api/tags", headers=ADMIN).json()["models"]
    assert len(everyone) > 1


def test_health_asked_often_costs_ollama_one_probe_per_interval(emulator: EmulatorServer, llm_url: str) -> None:
    """Health needs no login: were each call a live probe, anyone could multiply the load on Ollama."""
    for _ in range(30):
        assert httpx.get(llm_url + "/_gateway/health").status_code == 200
    probes = [r for r in emulator.emulator.requests if (r.method, r.path) == ("GET", "/")]
    assert len(probes) == 1  # the first probe of the background checks (every health_interval: 5 s)


def test_health_is_unavailable_while_the_only_backends_breaker_is_open(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(breaker_failures=1, breaker_cooldown=60)
    emulator.emulator.inject(Fault(path="/api/chat", kind="http_error", status=500))
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(server.url + "/llm/api/chat", json=chat, headers=AUTH).status_code == 500
    health = httpx.get(server.url + "/llm/_gateway/health")
    assert health.status_code == 503 and health.headers["retry-after"]
    assert health.json() == {
        "status": "unavailable",
        "backends": [{"name": "backend-0", "up": False, "breaker": "open", "draining": False}],
    }


def test_health_is_degraded_while_one_of_two_backends_is_down(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = host_factory(upstreams=({"url": emulator.url, "name": "a"}, {"url": dead, "name": "b"}))
    health = httpx.get(server.url + "/llm/_gateway/health")
    assert health.status_code == 200  # requests still have somewhere to go
    report = health.json()
    assert report["status"] == "degraded"
    assert [(b["name"], b["up"]) for b in report["backends"]] == [("a", True), ("b", False)]


def test_a_model_evicted_while_its_request_waited_for_a_slot_is_loaded_by_the_gateway_again(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    """The request passed the "loaded" check, then waited for the slot while another model's load
    evicted its (idle) model; sent as it was, Ollama would reload it past the gateway's memory budget."""
    emulator.emulator.token_interval = 0.05
    # llama3.2 ~2.0 GB, qwen2.5 ~0.40 GB, qwen3 ~0.52 GB: 2.7 GB holds llama3.2 and one small model.
    server = host_factory(vram_budget=int(2.7e9), parallel=1, backend_parallel=1)  # one slot for all models
    llm = server.url + "/llm"

    def chat(model: str, **extra: object) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "a b"}], "stream": False, **extra}
        return httpx.post(llm + "/api/chat", json=body, headers=AUTH, timeout=60)

    assert chat("qwen2.5:0.5b").status_code == 200  # loaded, then idle
    answers: dict[str, httpx.Response] = {}
    long = threading.Thread(target=lambda: answers.setdefault("llama", chat("llama3.2", options={"num_predict": 40})))
    long.start()  # holds the one slot for 2 s
    wait_until(lambda: emulator.emulator.stats.active == 1)
    waiting = threading.Thread(target=lambda: answers.setdefault("qwen2.5", chat("qwen2.5:0.5b")))
    waiting.start()  # its model is loaded: it waits for the slot
    time.sleep(0.3)
    evicting = threading.Thread(target=lambda: answers.setdefault("qwen3", chat("qwen3:0.6b")))
    evicting.start()  # its load evicts the idle qwen2.5 while the request for it waits
    wait_until(lambda: "qwen3:0.6b" in emulator.emulator.loaded_models(), timeout=10)
    assert "qwen2.5:0.5b" not in emulator.emulator.loaded_models()
    for thread in (long, waiting, evicting):
        thread.join(60)
    assert {name: a.status_code for name, a in answers.items()} == {"llama": 200, "qwen2.5": 200, "qwen3": 200}
    sent = [(r.path, r.json.get("model"), r.json.get("keep_alive")) for r in emulator.emulator.requests if r.json]
    loads = [model for path, model, keep_alive in sent if path == "/api/generate" and keep_alive != 0]
    assert loads.count("qwen2.5:0.5b") == 2  # the gateway loaded it again before sending the request
    assert sum(m.size_vram for m in emulator.emulator.loaded_models().values()) <= 2.7e9
