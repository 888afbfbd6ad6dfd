from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from ollama_asgi import OllamaGateway, Settings
from ollama_asgi.testing import EmulatorServer
from tests.support.hosts import starlette_host
from tests.support.server import ServerThread

API_KEY = "test-api-key-1"
ADMIN_KEY = "test-admin-key-1"


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as srv:
        yield srv


def start_host(upstream: str, **overrides: Any) -> ServerThread:
    """The Starlette test host with the gateway at /llm in front of ``upstream``, the test keys
    configured; keyword arguments override settings."""
    options: dict[str, Any] = {
        "upstreams": (upstream,),
        "api_keys": (f"ci={API_KEY}",),
        "admin_api_keys": (f"ops={ADMIN_KEY}",),
    }
    options.update(overrides)
    return ServerThread(starlette_host(OllamaGateway(Settings.from_mapping(options)))).start()


@pytest.fixture
def host_factory(emulator: EmulatorServer) -> Iterator[Callable[..., ServerThread]]:
    """Start the Starlette test host in front of the emulator; keyword arguments override settings."""
    started: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        server = start_host(emulator.url, **overrides)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def host(host_factory: Callable[..., ServerThread]) -> ServerThread:
    return host_factory()


@pytest.fixture
def llm_url(host: ServerThread) -> str:
    return host.url + "/llm"


def login(base_url: str, username: str) -> httpx.Cookies:
    response = httpx.post(base_url + "/login", json={"username": username, "password": f"{username}-password"})
    response.raise_for_status()
    return response.cookies


AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say plainly whether the real-Ollama suite ran, and against what."""
    outcomes: dict[str, int] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if "real_ollama" in getattr(report, "keywords", {}) and report.when in ("call", "setup"):
                if outcome == "passed" and report.when != "call":
                    continue
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if not outcomes:
        return
    binary = os.environ.get("OLLAMA_BIN") or shutil.which("ollama") or "none found"
    ran = outcomes.get("passed", 0) + outcomes.get("failed", 0)
    if ran == 0:
        terminalreporter.write_line(
            "real-Ollama suite: NOT RUN (no Ollama binary; set OLLAMA_BIN=/path/to/ollama to run it)",
            yellow=True,
            bold=True,
        )
        return
    counts = ", ".join(f"{n} {k}" for k, n in outcomes.items())
    terminalreporter.write_line(f"real-Ollama suite: ran against {binary}: {counts}", bold=True)
