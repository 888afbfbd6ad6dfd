"""Injected faults: each kind misbehaves exactly as documented, and only when armed."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from ollama_asgi.testing import EmulatorServer, Fault

from .conftest import ndjson, sse

STREAM = {"model": "llama3.2", "prompt": "a b", "options": {"num_predict": 6}}


def test_fault_kind_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault(kind="explode")  # type: ignore[arg-type]


def test_http_error_answers_before_any_byte(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(path="/api/generate", kind="http_error", status=502, message="bad gateway"))
    response = client.post("/api/generate", json=STREAM)
    assert (response.status_code, response.json()) == (502, {"error": "bad gateway"})
    assert response.headers["content-type"] == "application/json; charset=utf-8"


def test_http_error_on_v1_uses_the_openai_shape(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(kind="http_error", status=500, message="boom"))
    response = client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": [{"role": "user"}]})
    assert response.json() == {"error": {"message": "boom", "type": "api_error", "param": None, "code": None}}


def test_faults_are_one_shot_by_default(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(kind="http_error"))
    assert client.post("/api/generate", json=STREAM).status_code == 500
    assert client.post("/api/generate", json=STREAM).status_code == 200


def test_faults_can_repeat_or_last_until_cleared(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(kind="busy"), times=2)
    assert [client.post("/api/generate", json=STREAM).status_code for _ in range(3)] == [503, 503, 200]
    server.emulator.inject(Fault(kind="busy"), times=None)
    assert [client.post("/api/generate", json=STREAM).status_code for _ in range(3)] == [503, 503, 503]
    server.emulator.clear_faults()
    assert client.post("/api/generate", json=STREAM).status_code == 200


def test_faults_only_hit_their_path(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(path="/api/chat", kind="http_error"))
    assert client.post("/api/generate", json=STREAM).status_code == 200
    assert client.post("/api/chat", json={"model": "llama3.2", "messages": []}).status_code == 500


def test_fault_paths_can_be_globs(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(path="/v1/*", kind="http_error"))
    assert client.get("/api/tags").status_code == 200
    assert client.get("/v1/models").status_code == 500


def test_busy_fault_is_the_ollama_503(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(kind="busy"))
    response = client.post("/api/generate", json=STREAM)
    assert (response.status_code, response.json()) == (
        503,
        {"error": "server busy, please try again.  maximum pending requests exceeded"},
    )
    assert server.emulator.stats.rejected_busy == 1


def test_midstream_error_ends_with_an_error_line_and_status_200(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(kind="midstream_error", after_lines=2, message="runner died"))
    response = client.post("/api/generate", json=STREAM)
    assert response.status_code == 200
    lines = ndjson(response)
    assert len(lines) == 3
    assert lines[-1] == {"error": "runner died"}
    assert not any(line.get("done") for line in lines)


def test_midstream_error_on_v1_ends_without_done(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(kind="midstream_error", after_lines=1))
    events = sse(
        client.post(
            "/v1/chat/completions",
            json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": True},
        )
    )
    assert "[DONE]" not in events
    assert events[-1]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_close_midline_drops_the_connection_inside_a_line(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(kind="close_midline", after_lines=2))
    received = b""
    with pytest.raises(httpx.RemoteProtocolError), client.stream("POST", "/api/generate", json=STREAM) as response:
        for data in response.iter_raw():
            received += data
    complete, _, partial = received.rpartition(b"\n")
    assert len(complete.split(b"\n")) == 2
    assert partial and not partial.endswith(b"}")


def test_garbage_is_a_200_that_is_not_json(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(kind="garbage"))
    response = client.post("/api/generate", json=STREAM)
    assert response.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)


def test_stall_holds_the_stream_then_resumes(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(kind="stall", after_lines=1, delay=0.3))
    arrivals = []
    with client.stream("POST", "/api/generate", json=STREAM) as response:
        for _line in response.iter_lines():
            arrivals.append(time.monotonic())
    assert len(arrivals) == 7
    assert arrivals[1] - arrivals[0] >= 0.25


def test_slow_paces_every_token(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(kind="slow", delay=0.03))
    began = time.monotonic()
    client.post("/api/generate", json=STREAM)
    assert time.monotonic() - began >= 6 * 0.03


def test_hang_headers_delays_the_response_start(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.inject(Fault(kind="hang_headers", delay=0.3))
    began = time.monotonic()
    with client.stream("POST", "/api/generate", json=STREAM) as response:
        waited = time.monotonic() - began
        assert response.status_code == 200
        assert len(list(response.iter_lines())) == 7
    assert waited >= 0.28


def test_read_timeout_during_a_hang_is_counted_as_a_cancellation(server: EmulatorServer) -> None:
    server.emulator.inject(Fault(kind="hang_headers", delay=5))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/api/generate", json=STREAM, timeout=0.2)
    from .conftest import wait_for

    wait_for(lambda: server.emulator.stats.cancellations == 1)
