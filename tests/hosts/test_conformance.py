"""The same promises through every host: Starlette, Litestar, and Django both ways in.

Each test is one behaviour, run by the official clients against the host served by uvicorn on
loopback, with the host's own sign-in and the emulator behind the gateway.
"""

from __future__ import annotations

import time

import httpx
import ollama
import openai
import pytest

from ollama_asgi.testing import EmulatorServer
from tests.hosts.base import ADMIN_KEY, API_KEY, Host
from tests.support.rawhttp import wait_until

PROMPT = "one two three four five"
EXPECTED = "one two three four five one two three"  # the emulator cycles prompt words for 8 tokens
CHAT = [{"role": "user", "content": PROMPT}]


def upstream_calls(emulator: EmulatorServer, path: str) -> int:
    return sum(1 for r in emulator.emulator.requests if r.path == path)


def streamed_text(client: ollama.Client, model: str = "llama3.2") -> str:
    return "".join(part.message.content or "" for part in client.chat(model=model, messages=CHAT, stream=True))


def test_a_signed_in_user_streams_a_chat_with_the_session_cookie(host: Host) -> None:
    assert streamed_text(host.as_user("alice")) == EXPECTED


def test_an_api_key_client_streams_a_chat_without_any_csrf_token(host: Host) -> None:
    assert streamed_text(host.with_key(API_KEY)) == EXPECTED


def test_the_openai_client_works_with_an_api_key(host: Host) -> None:
    client = openai.OpenAI(base_url=host.llm_url + "/v1", api_key=API_KEY)
    completion = client.chat.completions.create(model="llama3.2", messages=CHAT)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == EXPECTED


def test_anonymous_callers_get_401(host: Host) -> None:
    for call in (host.anonymous().list, lambda: host.anonymous().chat(model="llama3.2", messages=CHAT)):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 401


def test_a_wrong_api_key_gets_401(host: Host) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        host.with_key("not-a-configured-key").list()
    assert info.value.status_code == 401


def test_a_user_without_the_model_permission_gets_403_naming_the_model(host: Host, emulator: EmulatorServer) -> None:
    before = upstream_calls(emulator, "/api/chat")
    with pytest.raises(ollama.ResponseError) as info:
        host.as_user("bob").chat(model="llama3.2", messages=CHAT)
    assert info.value.status_code == 403
    assert "llama3.2" in info.value.error
    assert upstream_calls(emulator, "/api/chat") == before
    assert streamed_text(host.as_user("bob"), model="qwen2.5:0.5b") == EXPECTED


def test_only_administrators_may_pull(host: Host, emulator: EmulatorServer) -> None:
    before = upstream_calls(emulator, "/api/pull")
    for client in (host.as_user("alice"), host.with_key(API_KEY)):
        with pytest.raises(ollama.ResponseError) as info:
            client.pull("qwen2.5:0.5b")
        assert info.value.status_code == 403
    assert upstream_calls(emulator, "/api/pull") == before
    assert host.as_user("root").pull("qwen2.5:0.5b").status == "success"
    assert host.with_key(ADMIN_KEY).pull("qwen2.5:0.5b").status == "success"


def test_a_session_post_without_the_csrf_token_is_refused(host: Host, emulator: EmulatorServer) -> None:
    before = upstream_calls(emulator, "/api/chat")
    with pytest.raises(ollama.ResponseError) as info:
        host.as_user("alice", csrf=False).chat(model="llama3.2", messages=CHAT)
    assert info.value.status_code == 403
    assert "csrf" in info.value.error.lower()
    assert upstream_calls(emulator, "/api/chat") == before


def test_a_session_get_needs_no_csrf_token(host: Host) -> None:
    names = {m.model for m in host.as_user("alice", csrf=False).list().models}
    assert "llama3.2:latest" in names


def test_the_gateway_answers_at_the_mount_root(host: Host) -> None:
    response = httpx.get(host.llm_url + "/")
    assert (response.status_code, response.text) == (200, "Ollama is running")


def test_paths_that_only_share_the_prefix_stay_with_the_host(host: Host) -> None:
    response = httpx.get(host.url + "/llmx/api/tags", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 404
    assert "models" not in response.text


def test_the_first_chunk_arrives_while_the_model_is_still_generating(host: Host, emulator: EmulatorServer) -> None:
    interval, tokens = 0.03, 40
    emulator.emulator.token_interval = interval
    try:
        client = host.with_key(API_KEY)
        started = time.monotonic()
        arrivals = [
            time.monotonic() - started
            for _ in client.generate(model="llama3.2", prompt=PROMPT, options={"num_predict": tokens}, stream=True)
        ]
    finally:
        emulator.emulator.token_interval = 0.0
    generation = interval * tokens
    assert len(arrivals) == tokens + 1
    assert arrivals[0] < generation / 2, f"first chunk after {arrivals[0]:.2f}s of a {generation:.2f}s generation"
    assert arrivals[-1] > generation * 0.8


def test_a_client_that_disconnects_stops_the_generation(host: Host, emulator: EmulatorServer) -> None:
    emulator.emulator.token_interval = 0.05
    cancelled = emulator.emulator.stats.cancellations
    try:
        body = {"model": "llama3.2", "prompt": PROMPT, "options": {"num_predict": 200}}
        with httpx.stream(
            "POST", host.llm_url + "/api/generate", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as response:
            assert response.status_code == 200
            next(response.iter_lines())
        wait_until(lambda: emulator.emulator.stats.cancellations > cancelled, timeout=5)
    finally:
        emulator.emulator.token_interval = 0.0
