"""Soak: many concurrent streams of mixed formats and models held through one gateway process.

Every stream must arrive complete: each token in order, then its final chunk (native ``done`` with
the right ``eval_count``; OpenAI's finish reason, usage and ``[DONE]``). The gateway's resident
memory must come back to where it was after a warm-up wave of the same width, and its open file
descriptors to where they were (pooled upstream connections are reused, never piled up).

``make test`` runs the short form (200 streams held about 5 s); ``make soak`` sets ``SOAK=full``
for 1,000 streams held 60 s. ``SOAK_STREAMS`` and ``SOAK_SECONDS`` override either.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest

from ollama_asgi.testing import EmulatorServer
from tests.conftest import API_KEY
from tests.reliability.helpers import MeasuredGateway

FULL = os.environ.get("SOAK") == "full"
STREAMS = int(os.environ.get("SOAK_STREAMS", 1000 if FULL else 200))
SECONDS = float(os.environ.get("SOAK_SECONDS", 60 if FULL else 5))
pytestmark = [pytest.mark.soak, pytest.mark.timeout(SECONDS * 3 + 120)]
TOKENS = 60 if FULL else 25
MODELS = ("llama3.2", "qwen2.5:0.5b")
KINDS = ("chat", "generate", "openai")
MiB = 1024 * 1024


@dataclass
class Figures:
    streams: int = 0
    chunks: int = 0
    rss_after_warmup: int = 0
    rss_peak: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds into the wave, RSS)
    rss_after: int = 0
    fds_after_warmup: int = 0
    fds_after: int = 0


def _tokens(prompt: str, count: int) -> list[str]:
    words = prompt.split()
    chosen = [words[i % len(words)] for i in range(count)]
    return [word + " " for word in chosen[:-1]] + chosen[-1:]


async def _stream(session: aiohttp.ClientSession, url: str, i: int, tokens: int) -> int:
    """One stream, checked token by token; returns the number of chunks read."""
    kind, model = KINDS[i % len(KINDS)], MODELS[(i // len(KINDS)) % len(MODELS)]
    prompt = f"s{i} alpha{i} beta{i}"
    expected = _tokens(prompt, tokens)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if kind == "chat":
        path = "/api/chat"
        body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        body["options"] = {"num_predict": tokens}
    elif kind == "generate":
        path, body = "/api/generate", {"model": model, "prompt": prompt, "options": {"num_predict": tokens}}
    else:
        path = "/v1/chat/completions"
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens}
        body.update(stream=True, stream_options={"include_usage": True})
    got: list[str] = []
    chunks = 0
    async with session.post(url + path, data=json.dumps(body), headers=headers) as response:
        assert response.status == 200, await response.text()
        if kind != "openai":
            lines = [orjson.loads(line) async for line in response.content if line.strip()]
            chunks = len(lines)
            for line in lines[:-1]:
                assert line["done"] is False
                got.append(line["message"]["content"] if kind == "chat" else line["response"])
            final = lines[-1]
            assert final["done"] is True and final["eval_count"] == tokens, final
            assert (final["message"]["content"] if kind == "chat" else final["response"]) == ""
        else:
            events = [line[6:].strip() async for line in response.content if line.startswith(b"data: ")]
            chunks = len(events)
            assert events[-1] == b"[DONE]", events[-3:]
            usage = orjson.loads(events[-2])
            assert usage["usage"]["completion_tokens"] == tokens, usage
            finish = orjson.loads(events[-3])
            assert finish["choices"][0]["finish_reason"] == "length", finish
            for event in events[:-3]:
                got.append(orjson.loads(event)["choices"][0]["delta"].get("content", ""))
            got = [t for t in got if t]
    assert got == expected, f"stream {i} ({kind}, {model}): tokens out of order or missing"
    return chunks


async def _wave(url: str, streams: int, tokens: int, gateway: MeasuredGateway, figures: Figures) -> int:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=SECONDS * 4 + 60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()

        async def sample() -> None:
            while True:
                rss = gateway.rss_bytes()
                figures.rss_peak = max(figures.rss_peak, rss)
                figures.rss_samples.append((time.monotonic() - started, rss))
                await asyncio.sleep(0.25)

        sampler = asyncio.ensure_future(sample())
        try:
            counts = await asyncio.gather(*(_stream(session, url, i, tokens) for i in range(streams)))
        finally:
            sampler.cancel()
    return sum(counts)


def _settle(gateway: MeasuredGateway, within: float = 10.0) -> int:
    """The gateway's descriptor count once closed client connections have left it (steady for 0.3 s)."""
    deadline = time.monotonic() + within
    last, steady_since = gateway.open_fds(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = gateway.open_fds()
        if now != last:
            last, steady_since = now, time.monotonic()
        elif time.monotonic() - steady_since >= 0.3:
            break
    return last


@pytest.fixture
def soak_gateway(emulator: EmulatorServer) -> Iterator[MeasuredGateway]:
    emulator.emulator.parallel = STREAMS
    emulator.emulator.max_queue = STREAMS * 2
    emulator.emulator.vram_bytes = 2**40  # KV caches for 1,000 parallel sequences
    gateway = MeasuredGateway(
        {
            "OLLAMA_ASGI_UPSTREAMS": emulator.url,
            "OLLAMA_ASGI_API_KEYS": f"ci={API_KEY}",
            "OLLAMA_ASGI_PARALLEL": str(STREAMS),
            "OLLAMA_ASGI_MAX_QUEUE": str(STREAMS),
            "OLLAMA_ASGI_PREWARM": "false",
        }
    )
    gateway.wait_ready()
    yield gateway
    gateway.stop()


async def test_concurrent_streams_arrive_whole_and_the_gateway_stays_flat(
    emulator: EmulatorServer, soak_gateway: MeasuredGateway
) -> None:
    gateway, figures = soak_gateway, Figures(streams=STREAMS)
    # Warm-up wave of the same width, every stream open at once for about a second: models loaded,
    # connection pools at their working size.
    emulator.emulator.token_interval = 0.3
    await _wave(gateway.url, STREAMS, 3, gateway, Figures())
    figures.fds_after_warmup = _settle(gateway)
    figures.rss_after_warmup = gateway.rss_bytes()

    emulator.emulator.token_interval = SECONDS / TOKENS
    started = time.monotonic()
    figures.chunks = await _wave(gateway.url, STREAMS, TOKENS, gateway, figures)
    held = time.monotonic() - started
    figures.fds_after = _settle(gateway)
    figures.rss_after = gateway.rss_bytes()
    # While every stream is held (after the ramp-up, before the first one ends), memory must not climb.
    hold = [rss for t, rss in figures.rss_samples if SECONDS * 0.25 <= t <= SECONDS * 0.95]
    hold_growth = max(hold) - hold[0] if hold else 0

    report = {
        "streams": figures.streams,
        "held_seconds": round(held, 1),
        "chunks": figures.chunks,
        "rss_after_warmup_mib": round(figures.rss_after_warmup / MiB, 1),
        "rss_peak_mib": round(figures.rss_peak / MiB, 1),
        "rss_after_mib": round(figures.rss_after / MiB, 1),
        "rss_growth_mib": round((figures.rss_after - figures.rss_after_warmup) / MiB, 1),
        "rss_growth_while_held_mib": round(hold_growth / MiB, 1),
        "fds_after_warmup": figures.fds_after_warmup,
        "fds_after": figures.fds_after,
    }
    print("soak figures:", json.dumps(report))
    assert held >= SECONDS * 0.9  # the streams were really held, not rushed
    assert figures.fds_after <= figures.fds_after_warmup + 5, report
    # Flat: what one wave allocates is given back (a leak of even 1 KiB per stream would show at full size).
    assert figures.rss_after - figures.rss_after_warmup < (16 if not FULL else 32) * MiB, report
    assert hold_growth < 8 * MiB, report
