"""GC tuning: opt-in for a mounted gateway, done once, never lowering what the host chose."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from ollama_asgi import OllamaGateway, Settings
from ollama_asgi.gc_tuning import YOUNG_THRESHOLD, tune_gc
from ollama_asgi.testing import EmulatorServer


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_gc_freezes_what_is_alive_and_raises_the_young_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    assert tune_gc() == (700, 10, 10)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 1000  # the interpreter, pytest and the package are out of every scan


def test_tune_gc_keeps_a_higher_threshold_and_a_disabled_collector_as_they_are() -> None:
    gc.set_threshold(50_000, 20, 20)
    tune_gc()
    assert gc.get_threshold() == (50_000, 20, 20)
    gc.set_threshold(0, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (0, 10, 10)


@pytest.mark.parametrize("enabled", [True, False])
async def test_a_gateway_tunes_the_collector_at_its_first_request_only_when_asked(
    emulator: EmulatorServer, enabled: bool
) -> None:
    gc.set_threshold(700, 10, 10)
    gateway = OllamaGateway(Settings(upstreams=(emulator.url,), tune_gc=enabled))
    assert gc.get_threshold()[0] == 700  # building the app changes nothing
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gw") as client:
        assert (await client.get("/")).status_code == 200
        assert gc.get_threshold()[0] == (YOUNG_THRESHOLD if enabled else 700)
        assert (gc.get_freeze_count() > 0) is enabled
        gc.set_threshold(700, 10, 10)
        assert (await client.get("/")).status_code == 200
        assert gc.get_threshold()[0] == 700  # once only: a later choice of the host stands
    await gateway.aclose()


def test_serve_tunes_its_own_process_unless_told_not_to() -> None:
    probe = (
        "import gc, sys; from unittest import mock; import uvicorn;"
        "from ollama_asgi import cli;"
        "mock.patch.object(uvicorn.Server, 'run', lambda self: print(gc.get_threshold()[0], gc.get_freeze_count() > 0)).start();"
        "cli.main(sys.argv[1:])"
    )
    env = {"OLLAMA_ASGI_UPSTREAMS": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"}
    tuned = subprocess.run([sys.executable, "-c", probe, "serve"], capture_output=True, text=True, env=env, check=False)
    plain = subprocess.run(
        [sys.executable, "-c", probe, "serve", "--default-gc"], capture_output=True, text=True, env=env, check=False
    )
    assert tuned.stdout.split() == [str(YOUNG_THRESHOLD), "True"], tuned.stderr
    assert plain.stdout.split() == ["700", "False"], plain.stderr  # CPython's default, untouched
