from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.redis_server import RedisServer
from tests.support.server import ServerThread


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def chaos_host(host_factory: Callable[..., ServerThread]) -> Callable[..., ServerThread]:
    """A test host whose gateway gives up on a silent upstream after 1 s and keeps its breaker out of
    the way (tests that want the breaker set ``breaker_failures`` themselves)."""

    def start(**overrides: Any) -> ServerThread:
        options: dict[str, Any] = {
            "read_timeout": 1.0,
            "breaker_failures": 1000,
            "breaker_cooldown": 0.2,
            "health_interval": 0.2,
            "upstream_retry_after": 1.0,
        }
        options.update(overrides)
        return host_factory(**options)

    return start
