"""The real-Ollama suite: a real ``ollama serve`` (``OLLAMA_BIN``, else ``ollama`` on PATH) with models
made by the suite itself, the gateway in front of it in a real host under uvicorn.

Without a binary the suite is skipped and ``make test`` says so in its summary; under ``CI=true``
a missing binary fails the run instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ollama_asgi.testing.real import RealOllama, find_ollama_binary
from tests.conftest import start_host
from tests.support.server import ServerThread

MODELS = ("tiny", "loop", "tools", "tools2")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.real_ollama)


@pytest.fixture(scope="session")
def ollama_binary() -> str:
    try:
        binary = find_ollama_binary()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    if binary is None:
        message = (
            "no Ollama binary: set OLLAMA_BIN=/path/to/ollama (or put ollama on PATH) to run the real-Ollama suite"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (required under CI=true)")
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def real_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One models store for every server of the run: each model is created once."""
    return tmp_path_factory.mktemp("ollama-models")


@pytest.fixture(scope="session")
def real_fixtures_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ollama-fixtures")


@pytest.fixture(scope="session")
def start_ollama(
    ollama_binary: str, real_models_dir: Path, real_fixtures_dir: Path
) -> Iterator[Callable[..., RealOllama]]:
    """Start a real server with extra ``OLLAMA_*`` settings; every one started is stopped at the end."""
    started: list[RealOllama] = []

    def start(models: tuple[str, ...] = MODELS, **env: str) -> RealOllama:
        server = RealOllama(ollama_binary, env=env, models_dir=real_models_dir, fixtures_dir=real_fixtures_dir)
        started.append(server)
        server.start()
        server.create(models)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def ollama(start_ollama: Callable[..., RealOllama]) -> RealOllama:
    """The shared real server (default settings), for tests that change nothing in it."""
    return start_ollama()


@pytest.fixture
def own_ollama(start_ollama: Callable[..., RealOllama]) -> Iterator[Callable[..., RealOllama]]:
    """A real server of the test's own, with its own settings, stopped when the test ends."""
    mine: list[RealOllama] = []

    def start(models: tuple[str, ...] = MODELS, **env: str) -> RealOllama:
        server = start_ollama(models, **env)
        mine.append(server)
        return server

    yield start
    for server in mine:
        server.stop()


@pytest.fixture
def gateway_for() -> Iterator[Callable[..., ServerThread]]:
    """The Starlette host with the gateway at /llm in front of a given real server."""
    started: list[ServerThread] = []

    def start(server: RealOllama, **overrides: Any) -> ServerThread:
        host = start_host(server.url, **overrides)
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()


@pytest.fixture
def gateway(gateway_for: Callable[..., ServerThread], ollama: RealOllama) -> ServerThread:
    return gateway_for(ollama)
