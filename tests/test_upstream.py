"""The upstream client's read timeout: one timeout until the head, one sweep for bodies, aiohttp's public API only."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from ollama_asgi.testing import EmulatorServer, Fault
from ollama_asgi.upstream import Upstream, UpstreamError

_STREAM = json.dumps({"model": "llama3.2", "prompt": "x", "options": {"num_predict": 8}}).encode()
_JSON = [("Content-Type", "application/json")]


def test_a_streamed_body_is_read_without_a_per_read_timer_and_still_completes(emulator: EmulatorServer) -> None:
    emulator.emulator.token_interval = 0.1  # 8 tokens, 0.8 s: longer than the read timeout in all

    async def scenario() -> tuple[object, int, int]:
        upstream = Upstream(emulator.url, connect_timeout=1, read_timeout=0.3)
        try:
            resp = await upstream.open("POST", "/api/generate", headers=_JSON, body=_STREAM)
            assert resp.connection is not None
            per_read = resp.connection.protocol.read_timeout  # type: ignore[union-attr]
            watched = len(upstream._bodies)
            lines = (await resp.read()).splitlines()
            resp.close()
            await asyncio.sleep(0.2)  # a sweep or two: the finished body is forgotten
            assert not upstream._bodies
            return per_read, watched, len(lines)
        finally:
            await upstream.aclose()

    per_read, watched, lines = asyncio.run(scenario())
    assert per_read is None  # no timer rescheduled per token
    assert watched == 1
    assert lines == 9  # 8 tokens and the final chunk: silences between tokens are not idleness


def test_a_body_that_falls_silent_is_ended_with_a_timeout_by_the_sweep(emulator: EmulatorServer) -> None:
    emulator.emulator.inject(Fault(path="/api/generate", kind="stall", after_lines=2, delay=5.0))

    async def scenario() -> tuple[float, BaseException | None, int]:
        upstream = Upstream(emulator.url, connect_timeout=1, read_timeout=0.3)
        received = 0
        try:
            resp = await upstream.open("POST", "/api/generate", headers=_JSON, body=_STREAM)
            started = time.monotonic()
            try:
                async for chunk in resp.content.iter_any():
                    received += chunk.count(b"\n")
            except TimeoutError as exc:
                return time.monotonic() - started, exc, received
            return time.monotonic() - started, None, received
        finally:
            await upstream.aclose()

    waited, error, received = asyncio.run(scenario())
    assert isinstance(error, TimeoutError)
    assert received == 2
    assert 0.3 <= waited < 2.0  # the read timeout plus at most a sweep interval, not the 5 s stall


def test_a_head_that_never_comes_is_timed_out(emulator: EmulatorServer) -> None:
    emulator.emulator.inject(Fault(path="/api/generate", kind="hang_headers", delay=5.0))

    async def scenario() -> UpstreamError:
        upstream = Upstream(emulator.url, connect_timeout=1, read_timeout=0.3)
        try:
            with pytest.raises(UpstreamError) as caught:
                await upstream.open("POST", "/api/generate", headers=_JSON, body=_STREAM)
            return caught.value
        finally:
            await upstream.aclose()

    started = time.monotonic()
    error = asyncio.run(scenario())
    assert error.kind == "timeout"
    assert time.monotonic() - started < 2.0


def test_the_client_never_writes_aiohttps_connection_internals(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's protocol objects are its own: the timeouts are set through ``ClientTimeout`` alone."""
    from aiohttp.client_proto import ResponseHandler

    def refuse(self: ResponseHandler, value: float | None) -> None:
        raise AssertionError("ResponseHandler.read_timeout was written")

    monkeypatch.setattr(ResponseHandler, "read_timeout", ResponseHandler.read_timeout.setter(refuse))
    emulator.emulator.token_interval = 0.05  # the body follows its head: the connection is still open

    async def scenario() -> int:
        upstream = Upstream(emulator.url, connect_timeout=1, read_timeout=5)
        try:
            resp = await upstream.open("POST", "/api/generate", headers=_JSON, body=_STREAM)
            lines = (await resp.read()).splitlines()
            resp.close()
            return len(lines)
        finally:
            await upstream.aclose()

    assert asyncio.run(scenario()) == 9
