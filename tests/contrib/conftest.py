from __future__ import annotations

import pytest

from ollama_asgi.testing import EmulatorServer
from tests.hosts.shared import shared_emulator


@pytest.fixture
def emulator() -> EmulatorServer:
    """The session's shared emulator, which the adapters under test point at."""
    return shared_emulator()
