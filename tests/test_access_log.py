"""One structured access-log line per request, and an X-Request-Id on every answer."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from ollama_asgi.testing import EmulatorServer, Fault
from tests.conftest import ADMIN, AUTH
from tests.support.processes import free_port
from tests.support.rawhttp import request, wait_until
from tests.support.server import ServerThread

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "a secret prompt", "images": ["aGk="]}]}


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., list[dict[str, object]]]]:
    caplog.set_level(logging.DEBUG, logger="ollama_asgi.access")

    def lines(count: int = 1) -> list[dict[str, object]]:
        """The access lines so far, once there are ``count`` (a line is written just after the last byte)."""
        wait_until(lambda: len([r for r in caplog.records if r.name == "ollama_asgi.access"]) >= count)
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == "ollama_asgi.access"]

    yield lines


def test_each_request_is_one_json_line_with_what_happened(
    llm_url: str, access: Callable[..., list[dict[str, object]]]
) -> None:
    response = httpx.post(llm_url + "/api/chat", json=CHAT, headers={**AUTH, "X-Request-Id": "req-42"})
    assert response.status_code == 200
    (line,) = access()
    final = json.loads(response.text.splitlines()[-1])
    assert line["request_id"] == "req-42"
    assert (line["method"], line["route"], line["model"], line["principal"]) == ("POST", "chat", "llama3.2", "ci")
    assert (line["backend"], line["status"], line["reason"], line["error"]) == ("backend-0", 200, None, None)
    assert line["prompt_tokens"] == final["prompt_eval_count"] and line["completion_tokens"] == final["eval_count"]
    assert line["bytes"] == len(response.content)
    assert 0 <= line["queue_wait"] <= line["ttfb"] <= line["duration"]  # type: ignore[operator]
    assert "prompt" not in line and "secret" not in json.dumps(line)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", CHAT),
        (
            "/v1/chat/completions",
            {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ),
    ],
)
def test_a_stream_that_outlasts_the_disconnect_watch_is_logged_as_answered(
    llm_url: str, emulator: EmulatorServer, access: Callable[..., list[dict[str, object]]], path: str, body: object
) -> None:
    # The finished response reaches the disconnect listener as http.disconnect before the request's
    # task resumes from its relay task: that must not turn a whole answer into a 499.
    emulator.emulator.token_interval = 0.02  # eight tokens: well past the watcher's 50 ms
    response = httpx.post(llm_url + path, json=body, headers=AUTH, timeout=30)
    assert response.status_code == 200
    (line,) = access()
    assert (line["status"], line["reason"], line["error"]) == (200, None, None)
    assert line["completion_tokens"] and line["bytes"] == len(response.content)


def test_prompts_are_logged_only_when_enabled_and_never_images(
    host_factory: Callable[..., ServerThread], access: Callable[..., list[dict[str, object]]]
) -> None:
    server = host_factory(log_prompts=True)
    assert httpx.post(server.url + "/llm/api/chat", json=CHAT, headers=AUTH).status_code == 200
    (line,) = access()
    assert line["prompt"] == {"messages": [{"role": "user", "content": "a secret prompt"}]}


def test_rejections_are_logged_with_their_reason(llm_url: str, access: Callable[..., list[dict[str, object]]]) -> None:
    httpx.post(llm_url + "/api/chat", json=CHAT)
    httpx.post(llm_url + "/api/chat", json={"model": "a/../b"}, headers=AUTH)
    unauthorised, bad = access(2)
    assert (unauthorised["status"], unauthorised["reason"], unauthorised["principal"]) == (401, "auth", None)
    assert (bad["status"], bad["reason"], bad["principal"]) == (400, "bad_request", "ci")
    assert "invalid model name" in str(bad["error"])


def test_an_unreachable_upstream_is_a_warning(
    host_factory: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ollama_asgi.access")
    server = host_factory(upstreams=(f"http://127.0.0.1:{free_port()}",))
    assert httpx.post(server.url + "/llm/api/chat", json=CHAT, headers=AUTH).status_code == 503
    wait_until(lambda: any(r.name == "ollama_asgi.access" for r in caplog.records))
    (record,) = [r for r in caplog.records if r.name == "ollama_asgi.access"]
    assert record.levelno == logging.WARNING
    assert record.ollama_asgi["reason"] == "upstream_unreachable"  # type: ignore[attr-defined]


def test_probes_and_scrapes_are_debug_lines(
    llm_url: str, caplog: pytest.LogCaptureFixture, access: Callable[..., list[dict[str, object]]]
) -> None:
    httpx.get(llm_url + "/_gateway/health")
    httpx.get(llm_url + "/_gateway/metrics", headers=ADMIN)
    assert [line["route"] for line in access(2)] == ["health", "metrics"]
    assert {r.levelno for r in caplog.records if r.name == "ollama_asgi.access"} == {logging.DEBUG}


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("POST", "/api/chat", AUTH, 200),
        ("POST", "/v1/chat/completions", AUTH, 200),
        ("POST", "/api/embed", AUTH, 200),
        ("GET", "/api/tags", AUTH, 200),
        ("POST", "/api/chat", {}, 401),
        ("GET", "/api/nothing", AUTH, 404),
        ("GET", "/_gateway/health", {}, 200),
        ("GET", "/_gateway/status", ADMIN, 200),
        ("GET", "/_gateway/metrics", AUTH, 403),
    ],
)
def test_every_answer_carries_the_clients_request_id(
    llm_url: str, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    body = {"model": "nomic-embed-text" if "embed" in path else "llama3.2", "input": "x", **CHAT}
    response = httpx.request(
        method, llm_url + path, json=body if method == "POST" else None, headers={**headers, "X-Request-Id": "abc"}
    )
    assert response.status_code == status
    assert response.headers["x-request-id"] == "abc"


@pytest.mark.parametrize("given", ["", "x" * 129, "has space", "tab\there", "ünïcode"])
def test_unusable_request_ids_are_replaced(llm_url: str, given: str) -> None:
    headers = {**AUTH, "X-Request-Id": given.encode("utf-8")}
    response = httpx.post(llm_url + "/api/chat", json=CHAT, headers=headers)  # type: ignore[arg-type]
    generated = response.headers["x-request-id"]
    assert generated != given and len(generated) == 32 and int(generated, 16) >= 0


def test_a_request_without_an_id_gets_a_fresh_one(llm_url: str) -> None:
    ids = {httpx.get(llm_url + "/api/tags", headers=AUTH).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_a_stream_that_started_while_queued_carries_the_request_id(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.05
    server = host_factory(parallel=1, sse_keepalive=0.1)
    blocking = {"model": "llama3.2", "prompt": "b", "options": {"num_predict": 10}}
    blocker = request(server.url + "/llm/api/generate", body=json.dumps(blocking).encode(), headers=AUTH)
    time.sleep(0.1)
    body = json.dumps({"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "k"}]}).encode()
    response = request(server.url + "/llm/v1/chat/completions", body=body, headers={**AUTH, "X-Request-Id": "queued-1"})
    chunks = response.chunks()
    assert chunks[0].startswith(b": ")  # the head went out with a keep-alive comment, before Ollama answered
    assert response.headers["x-request-id"] == "queued-1"
    blocker.chunks()


def test_a_stream_broken_after_its_status_is_a_warning_with_its_reason(
    emulator: EmulatorServer, llm_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ollama_asgi.access")
    emulator.emulator.inject(Fault(path="/api/chat", kind="close_midline", after_lines=2))
    with httpx.stream("POST", llm_url + "/api/chat", json=CHAT, headers=AUTH) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines()]
    assert "error" in lines[-1]
    wait_until(lambda: any(r.name == "ollama_asgi.access" for r in caplog.records))
    (record,) = [r for r in caplog.records if r.name == "ollama_asgi.access"]
    fields = record.ollama_asgi  # type: ignore[attr-defined]
    assert record.levelno == logging.WARNING
    assert (fields["status"], fields["reason"]) == (200, "stream_broken")
    assert "broke mid-stream" in fields["error"]
