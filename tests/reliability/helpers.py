"""What the reliability and security suites share: reaching the gateway inside a test host, proving
it idle (no slot, queue place or load left behind), reading streams strictly, and a gateway process
whose memory and file descriptors can be read from /proc."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import redis

from ollama_asgi import OllamaGateway
from tests.support.processes import GatewayProcess, free_port
from tests.support.server import ServerThread


def gateway_of(server: ServerThread) -> OllamaGateway:
    """The gateway mounted at /llm in a test host built by ``host_factory``."""
    for route in server.app.routes:
        app = getattr(route, "app", None)
        if isinstance(app, OllamaGateway):
            return app
    raise LookupError("no gateway mounted in this host")


def leaks(gateway: OllamaGateway) -> list[str]:
    """Everything a request may hold that is still held: slots, queue places, loads, model counters."""
    found = [
        f"pool {pool.key}: in_flight={pool.in_flight} waiting={pool.waiting}"
        for backend in gateway.registry.backends
        for pool in backend.slots.pools.values()
        if pool.in_flight or pool.waiting
    ]
    if gateway.lifecycle is not None:
        found += [f"load in progress: {key}" for key in gateway.lifecycle.loader.loading]
        found += [
            f"model {model} on {backend}: {count} in flight"
            for backend, models in gateway.lifecycle.models.items()
            for model, count in models.in_flight.items()
            if count
        ]
    return found


def queued_at(gateway: OllamaGateway) -> int:
    """Requests waiting for a slot, over all pools."""
    return sum(pool.waiting for backend in gateway.registry.backends for pool in backend.slots.pools.values())


async def assert_idle(gateway: OllamaGateway, within: float = 5.0) -> None:
    """Once every client has its answer, nothing may stay held (the server thread finishes its part)."""
    deadline = time.monotonic() + within
    while leaks(gateway):
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway did not return to idle: {leaks(gateway)}")
        await asyncio.sleep(0.02)


async def until(predicate: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` (state another thread changes) until it holds."""
    deadline = time.monotonic() + within
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within:g}s")
        await asyncio.sleep(0.01)


def redis_leftovers(url: str, prefix: str) -> dict[str, int]:
    """Slot leases and queue places (sorted sets) and load locks still in Redis under ``prefix``."""
    client = redis.Redis.from_url(url)
    try:
        left: dict[str, int] = {}
        for key in client.scan_iter(match=f"{prefix}:*"):
            if client.type(key) == b"zset":
                if client.zcard(key):
                    left[key.decode()] = int(client.zcard(key))
            elif b":load:" in key:
                left[key.decode()] = 1
        return left
    finally:
        client.close()


# -- strict stream readers ------------------------------------------------------------------------


@dataclass
class Answer:
    """One response read to its end: status, headers and the decoded lines or events."""

    status: int
    headers: httpx.Headers
    items: list[Any] = field(default_factory=list)
    raw: bytes = b""

    @property
    def text(self) -> str:
        """The generated text: native ``response`` / ``message.content`` or OpenAI deltas."""
        out = []
        for item in self.items:
            if not isinstance(item, dict):
                continue
            if "response" in item:
                out.append(item["response"])
            elif isinstance(item.get("message"), dict):
                out.append(item["message"].get("content", ""))
            for choice in item.get("choices") or ():
                message = choice.get("delta") or choice.get("message") or {}
                out.append(message.get("content") or choice.get("text") or "")
        return "".join(out)

    @property
    def error(self) -> str | None:
        """The terminal error a broken stream ended with, or the error body of a refused request."""
        last = self.items[-1] if self.items else None
        if isinstance(last, dict) and "error" in last:
            error = last["error"]
            return str(error["message"] if isinstance(error, dict) else error)
        return None


async def read_ndjson(client: httpx.AsyncClient, path: str, body: dict[str, Any], **kw: Any) -> Answer:
    """Every line must be a JSON object; a non-200 answer must be one JSON error object."""
    async with client.stream("POST", path, json=body, **kw) as response:
        raw = await response.aread()
    answer = Answer(response.status_code, response.headers, raw=raw)
    if response.status_code != 200 or not response.headers.get("content-type", "").startswith("application/x-ndjson"):
        answer.items = [orjson.loads(raw)]
        return answer
    assert raw.endswith(b"\n"), f"the stream was cut mid-line: {raw[-80:]!r}"
    answer.items = [orjson.loads(line) for line in raw.splitlines()]
    return answer


async def read_sse(client: httpx.AsyncClient, path: str, body: dict[str, Any], **kw: Any) -> Answer:
    """Every event must be ``data: <json>`` or ``data: [DONE]`` (comments allowed while queued)."""
    async with client.stream("POST", path, json=body, **kw) as response:
        raw = await response.aread()
    answer = Answer(response.status_code, response.headers, raw=raw)
    if response.status_code != 200 or not response.headers.get("content-type", "").startswith("text/event-stream"):
        answer.items = [orjson.loads(raw)]
        return answer
    assert raw.endswith(b"\n\n"), f"the stream was cut mid-event: {raw[-80:]!r}"
    for event in raw.split(b"\n\n"):
        if not event or event.startswith(b":"):
            continue
        assert event.startswith(b"data: "), event
        data = event[6:]
        answer.items.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return answer


def expected_text(prompt: str, tokens: int) -> str:
    """The emulator's deterministic reply: the prompt's words repeated to ``tokens`` tokens."""
    words = prompt.split()
    return " ".join(words[i % len(words)] for i in range(tokens))


# -- a gateway process that can be measured --------------------------------------------------------


class MeasuredGateway(GatewayProcess):
    """``ollama-asgi serve`` as a subprocess (like ``GatewayProcess``), its stderr kept in a file so a
    chatty shutdown can never block on a full pipe, with RSS and open descriptors read from /proc."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/llm"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_ASGI_")}
        environ.update(env)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ollama_asgi.cli", "serve", "--port", str(self.port), "--log-level", "warning"],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.stderr()}")
            try:
                if httpx.get(self.url + "/_gateway/health", timeout=1).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("gateway did not start")

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> None:
        super().stop()
        self.log.close()
