"""The emulator object: records, counters, live settings, lifespan, in-process use."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from ollama_asgi.testing import EmulatorServer, OllamaEmulator
from ollama_asgi.types import Message


def test_requests_are_recorded(server: EmulatorServer, client: httpx.Client) -> None:
    client.post("/api/generate?x=1", json={"model": "llama3.2"}, headers={"X-Trace": "t1"})
    record = server.emulator.requests[-1]
    assert (record.method, record.path, record.query) == ("POST", "/api/generate", "x=1")
    assert record.headers["x-trace"] == "t1"
    assert record.json == {"model": "llama3.2"}
    assert orjson.loads(record.body) == record.json


def test_clear_resets_records_and_counters_but_not_the_store(server: EmulatorServer, client: httpx.Client) -> None:
    client.post("/api/generate", json={"model": "llama3.2", "prompt": "x"})
    server.emulator.clear()
    assert server.emulator.requests == []
    assert server.emulator.stats.loads == server.emulator.stats.completed == 0
    assert "llama3.2:latest" in server.emulator.loaded_models()
    assert len(client.get("/api/tags").json()["models"]) > 0


def test_settings_can_change_while_running(server: EmulatorServer) -> None:
    server.emulator.parallel = 3
    httpx.post(f"{server.url}/api/generate", json={"model": "llama3.2"})
    assert server.emulator.loaded_models()["llama3.2:latest"].parallel == 3


def test_auto_context_length_follows_memory() -> None:
    assert OllamaEmulator(default_num_ctx=0, vram_bytes=16 * 2**30).effective_num_ctx == 4096
    assert OllamaEmulator(default_num_ctx=0, vram_bytes=32 * 2**30).effective_num_ctx == 32768
    assert OllamaEmulator(default_num_ctx=0, vram_bytes=80 * 2**30).effective_num_ctx == 262144


async def test_lifespan_is_supported() -> None:
    emulator = OllamaEmulator()
    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(events)

    async def send(message: Message) -> None:
        sent.append(message["type"])

    await emulator({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_works_in_process_without_a_server() -> None:
    emulator = OllamaEmulator()
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(
            "/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": "q"}]}
        )
    assert response.status_code == 200
    assert response.text.count("\n") == 9
    assert emulator.stats.completed == 1
