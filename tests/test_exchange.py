"""The exchange with a backend: a failure before any byte is a 503 or 504 the client can retry, and
the circuit breaker counts a backend's failures, not what its streams carried."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx
import pytest

from ollama_asgi import OllamaGateway, Settings
from ollama_asgi.testing import EmulatorServer, Fault
from tests.conftest import AUTH
from tests.support.hosts import starlette_host
from tests.support.server import ServerThread


def test_unreachable_upstream_gets_503_with_retry_after() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    gateway = OllamaGateway(Settings(upstreams=(f"http://127.0.0.1:{dead_port}",), auth="none", upstream_retry_after=3))
    with ServerThread(starlette_host(gateway)) as server:
        response = httpx.post(server.url + "/llm/api/chat", json={"model": "llama3.2", "messages": []})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "3"
        assert "cannot connect" in response.json()["error"]
        health = httpx.get(server.url + "/llm/_gateway/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"


# -- the circuit breaker counts a backend's failures, not what its streams carried ----------------------

CHAT_STREAM = {"model": "llama3.2", "messages": [{"role": "user", "content": "a b"}], "options": {"num_predict": 6}}


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/api/chat", "end_early"), ("/v1/chat/completions", "end_early"), ("/v1/chat/completions", "midstream_error")],
)
def test_streams_ending_oddly_do_not_open_the_breaker(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer, path: str, kind: str
) -> None:
    server = host_factory(breaker_failures=2, breaker_cooldown=60)
    emulator.emulator.inject(Fault(path="/api/chat", kind=kind, after_lines=2), times=3)
    body = {**CHAT_STREAM, "stream": True}
    for _ in range(3):
        ended = httpx.post(server.url + "/llm" + path, json=body, headers=AUTH, timeout=15)
        assert ended.status_code == 200 and "error" in ended.text.strip().splitlines()[-1]
    after = httpx.post(server.url + "/llm/api/chat", json=CHAT_STREAM, headers=AUTH, timeout=15)
    assert after.status_code == 200, after.text


def test_streams_whose_connection_goes_silent_open_the_breaker(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    server = host_factory(breaker_failures=2, breaker_cooldown=60, read_timeout=0.3)
    emulator.emulator.inject(Fault(path="/api/chat", kind="stall", after_lines=2, delay=2.0), times=2)
    for _ in range(2):
        httpx.post(server.url + "/llm/api/chat", json=CHAT_STREAM, headers=AUTH, timeout=15)
    after = httpx.post(server.url + "/llm/api/chat", json=CHAT_STREAM, headers=AUTH, timeout=15)
    assert after.status_code == 503, after.text


def test_ollamas_500_for_a_request_it_cannot_read_does_not_open_the_breaker(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    server = host_factory(breaker_failures=2, breaker_cooldown=60)
    fault = Fault(path="/api/chat", kind="http_error", status=500, message="invalid JSON schema in format")
    emulator.emulator.inject(fault, times=3)
    body = {**CHAT_STREAM, "format": {"type": "nonsense"}}
    for _ in range(3):
        refused = httpx.post(server.url + "/llm/api/chat", json=body, headers=AUTH, timeout=15)
        assert refused.status_code == 500 and refused.json() == {"error": "invalid JSON schema in format"}
    after = httpx.post(server.url + "/llm/api/chat", json=CHAT_STREAM, headers=AUTH, timeout=15)
    assert after.status_code == 200, after.text


def test_ollamas_own_500s_open_the_breaker(host_factory: Callable[..., ServerThread], emulator: EmulatorServer) -> None:
    server = host_factory(breaker_failures=2, breaker_cooldown=60)
    emulator.emulator.inject(Fault(path="/api/chat", kind="http_error", status=500), times=2)
    for _ in range(2):
        assert httpx.post(server.url + "/llm/api/chat", json=CHAT_STREAM, headers=AUTH, timeout=15).status_code == 500
    after = httpx.post(server.url + "/llm/api/chat", json=CHAT_STREAM, headers=AUTH, timeout=15)
    assert after.status_code == 503, after.text
