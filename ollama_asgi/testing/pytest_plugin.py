"""pytest fixtures that run the Ollama emulator on a free port (registered as a ``pytest11`` plugin).

Importing this module only defines fixtures; the emulator is imported when a fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ollama_asgi.testing.server import EmulatorServer

__all__ = ["ollama_emulator_server", "ollama_emulator_url"]


@pytest.fixture
def ollama_emulator_server() -> Iterator[EmulatorServer]:
    """A running :class:`EmulatorServer` with instant loads and tokens; stopped after the test."""
    from ollama_asgi.testing.server import EmulatorServer

    with EmulatorServer(token_interval=0.0, load_base_seconds=0.0) as server:
        yield server


@pytest.fixture
def ollama_emulator_url(ollama_emulator_server: EmulatorServer) -> str:
    """The base URL (``http://127.0.0.1:PORT``) of ``ollama_emulator_server``."""
    return ollama_emulator_server.url
