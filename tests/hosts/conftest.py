"""One fixture, ``host``, parametrized over every host framework (the Strawberry pattern).

Each host server starts once per session and is shared by every behaviour test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ollama_asgi.testing import EmulatorServer
from tests.hosts import django_hosts, litestar_host, starlette_host
from tests.hosts.base import Host
from tests.hosts.shared import shared_emulator
from tests.support.server import ServerThread

STARTERS: dict[str, Callable[[], tuple[Host, ServerThread]]] = {
    "starlette": lambda: starlette_host.start(shared_emulator().url),
    "litestar": lambda: litestar_host.start(shared_emulator().url),
    "django-urlconf": django_hosts.start_urlconf,
    "django-asgi": django_hosts.start_mount,
}


@pytest.fixture(scope="session", params=list(STARTERS))
def host(request: pytest.FixtureRequest) -> Iterator[Host]:
    started, _ = STARTERS[request.param]()
    yield started
    started.stop()


@pytest.fixture
def emulator() -> EmulatorServer:
    return shared_emulator()
