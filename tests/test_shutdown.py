"""How the gateway stops: the ASGI lifespan events, where the host forwards them, and a graceful drain."""

from __future__ import annotations

import logging

import pytest

from ollama_asgi import OllamaGateway, Settings
from ollama_asgi.types import Message


def _gateway() -> OllamaGateway:
    return OllamaGateway(Settings(upstreams=("http://127.0.0.1:9",), auth="none"))


async def test_the_lifespan_starts_at_once_and_closes_the_gateway_at_shutdown() -> None:
    gateway = _gateway()
    events: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> Message:
        return events.pop(0)

    async def send(message: Message) -> None:
        sent.append(message["type"])

    await gateway({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_a_shutdown_begun_twice_is_begun_once(caplog: pytest.LogCaptureFixture) -> None:
    gateway = _gateway()
    assert not gateway.shutting_down
    with caplog.at_level(logging.WARNING, logger="ollama_asgi"):
        gateway.begin_shutdown()
        gateway.begin_shutdown()
    assert gateway.shutting_down
    assert len([r for r in caplog.records if r.getMessage().startswith("shutting down")]) == 1
    await gateway.aclose()
