"""Shared helpers: every emulator test talks to a real HTTP server on a free loopback port."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from ollama_asgi.testing import EmulatorServer

Serve = Callable[..., EmulatorServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start servers with any emulator settings; all are stopped after the test."""
    servers: list[EmulatorServer] = []

    def start(**kwargs: Any) -> EmulatorServer:
        server = EmulatorServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(serve: Serve) -> EmulatorServer:
    return serve()


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in response.text.splitlines() if line]


def sse(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of an SSE body; ``[DONE]`` stays a string."""
    events = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: ") :]
            events.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return events


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
