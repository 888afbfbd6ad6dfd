"""EmulatorServer: a real HTTP server on a free port, prompt stops, deaths and restarts."""

from __future__ import annotations

import re
import socket
import threading
import time

import httpx
import pytest

from ollama_asgi.testing import EmulatorServer, OllamaEmulator

from .conftest import Serve, wait_for

LONG = {"model": "llama3.2", "prompt": "x", "options": {"num_predict": 1000}}


def test_port_zero_binds_a_free_port(server: EmulatorServer) -> None:
    assert server.port > 0
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
    assert httpx.get(server.url).text == "Ollama is running"


def test_two_servers_get_different_ports(serve: Serve) -> None:
    assert serve().port != serve().port


def test_context_manager_starts_and_stops() -> None:
    with EmulatorServer() as server:
        url = server.url
        assert server.running
    assert not server.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


def test_an_existing_emulator_can_be_served() -> None:
    emulator = OllamaEmulator(version="9.9.9")
    with EmulatorServer(emulator) as server:
        assert server.emulator is emulator
        assert httpx.get(f"{server.url}/api/version").json() == {"version": "9.9.9"}


def test_emulator_and_keyword_arguments_are_exclusive() -> None:
    with pytest.raises(TypeError):
        EmulatorServer(OllamaEmulator(), parallel=2)


def test_busy_port_fails_to_start(server: EmulatorServer) -> None:
    with pytest.raises(OSError):
        EmulatorServer(port=server.port).start()


def test_client_disconnect_mid_stream_stops_generation_and_is_counted(serve: Serve) -> None:
    server = serve(token_interval=0.01)
    with httpx.Client(base_url=server.url) as client, client.stream("POST", "/api/generate", json=LONG) as response:
        lines = response.iter_lines()
        next(lines), next(lines)
    wait_for(lambda: server.emulator.stats.cancellations == 1)
    assert server.emulator.stats.active == 0
    assert server.emulator.stats.completed == 0


def test_client_leaving_a_non_streamed_request_stops_it(serve: Serve) -> None:
    server = serve(token_interval=0.01)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/api/generate", json={**LONG, "stream": False}, timeout=0.2)
    wait_for(lambda: server.emulator.stats.cancellations == 1)
    assert server.emulator.stats.active == 0


def test_ten_thousand_token_stream_is_quick(server: EmulatorServer) -> None:
    began = time.monotonic()
    body = {"model": "llama3.2", "prompt": "t", "options": {"num_predict": 10000}}
    with httpx.Client(base_url=server.url) as client, client.stream("POST", "/api/generate", json=body) as response:
        count = sum(1 for _ in response.iter_lines())
    assert count == 10001
    assert time.monotonic() - began < 5


def test_stop_is_prompt_with_open_streams(serve: Serve) -> None:
    server = serve(token_interval=0.05, parallel=3)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with httpx.stream("POST", f"{server.url}/api/generate", json=LONG, timeout=10) as response:
                for _ in response.iter_lines():
                    pass
        except httpx.HTTPError as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    wait_for(lambda: server.emulator.stats.active == 3)
    began = time.monotonic()
    server.stop()
    assert time.monotonic() - began < 1
    for reader in readers:
        reader.join(5)
    assert len(errors) == 3
    assert server.emulator.stats.active == 0


def test_kill_refuses_connections_and_restart_comes_back_empty(server: EmulatorServer) -> None:
    httpx.post(f"{server.url}/api/generate", json={"model": "llama3.2"})
    port = server.port
    server.kill()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, timeout=1)
    server.restart()
    assert server.port == port
    assert httpx.get(f"{server.url}/api/ps").json() == {"models": []}
    assert httpx.post(f"{server.url}/api/generate", json={"model": "llama3.2", "prompt": "x"}).status_code == 200


def test_kill_resets_open_streams(serve: Serve) -> None:
    server = serve(token_interval=0.02)
    with pytest.raises(httpx.HTTPError), httpx.stream("POST", f"{server.url}/api/generate", json=LONG) as response:
        lines = response.iter_lines()
        next(lines)
        server.kill()
        list(lines)


def test_restart_while_running_keeps_the_port(server: EmulatorServer) -> None:
    port = server.port
    server.restart()
    assert server.port == port
    assert httpx.get(server.url).status_code == 200


def test_explicit_port_is_used() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with EmulatorServer(port=port) as server:
        assert server.url.endswith(f":{port}")
