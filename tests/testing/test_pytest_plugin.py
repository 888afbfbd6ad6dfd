"""The pytest fixtures shipped for users' own test suites."""

from __future__ import annotations

import httpx

from ollama_asgi.testing import EmulatorServer


def test_server_fixture_is_running(ollama_emulator_server: EmulatorServer) -> None:
    assert ollama_emulator_server.running
    assert ollama_emulator_server.emulator.token_interval == 0.0


def test_url_fixture_points_at_the_server(ollama_emulator_url: str, ollama_emulator_server: EmulatorServer) -> None:
    assert ollama_emulator_url == ollama_emulator_server.url
    assert httpx.get(f"{ollama_emulator_url}/api/version").status_code == 200


def test_each_test_gets_a_fresh_server(ollama_emulator_server: EmulatorServer) -> None:
    assert ollama_emulator_server.emulator.requests == []
