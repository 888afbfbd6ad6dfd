"""Ollama's Host (DNS-rebinding) and Origin (CORS) guards."""

from __future__ import annotations

import httpx
import pytest

from ollama_asgi.testing import EmulatorServer, OllamaEmulator

from .conftest import Serve


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:11434", "8.8.8.8"])
def test_foreign_host_header_is_403_with_empty_body(client: httpx.Client, host: str) -> None:
    response = client.get("/api/tags", headers={"host": host})
    assert (response.status_code, response.content) == (403, b"")


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:11434", "box.local", "app.internal", "a.localhost", "10.1.2.3"]
)
def test_local_host_headers_are_allowed(client: httpx.Client, host: str) -> None:
    assert client.get("/api/tags", headers={"host": host}).status_code == 200


def test_host_check_can_be_disabled(serve: Serve) -> None:
    server = serve(check_host=False)
    assert httpx.get(f"{server.url}/api/tags", headers={"host": "evil.example.com"}).status_code == 200


def test_options_with_an_allowed_host_is_204(client: httpx.Client) -> None:
    assert client.options("/api/chat").status_code == 204


def test_foreign_origin_is_403_with_empty_body(client: httpx.Client) -> None:
    response = client.post("/api/generate", json={"model": "llama3.2"}, headers={"origin": "https://evil.example"})
    assert (response.status_code, response.content) == (403, b"")


def test_local_origin_gets_cors_headers(client: httpx.Client) -> None:
    response = client.get("/api/tags", headers={"origin": "http://localhost:3000"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_same_origin_is_not_a_cors_request(client: httpx.Client, server: EmulatorServer) -> None:
    response = client.get("/api/tags", headers={"origin": server.url})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_cors_preflight_is_answered(client: httpx.Client) -> None:
    response = client.options("/api/chat", headers={"origin": "app://desk", "access-control-request-method": "POST"})
    assert response.status_code == 204
    assert "Authorization" in response.headers["access-control-allow-headers"]


def test_extra_allowed_origins(serve: Serve) -> None:
    server = serve(allowed_origins=["chrome-extension://*"])
    response = httpx.get(f"{server.url}/api/tags", headers={"origin": "chrome-extension://abc"})
    assert response.status_code == 200


async def test_in_process_transports_skip_the_host_check() -> None:
    transport = httpx.ASGITransport(app=OllamaEmulator())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/api/tags")).status_code == 200
