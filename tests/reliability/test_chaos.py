"""Chaos: Ollama dies, stalls, lies or refuses; Redis dies; the upstream does not exist.

Every case holds the gateway to the same three promises: each client gets either the complete,
correct answer or a well-formed error (a JSON error body with a proper status, or a stream that
ends with one terminal error line or event); the gateway recovers without a restart; and once the
clients have their answers nothing is held: no slot, no queue place, no model load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ollama_asgi.testing import EmulatorServer, Fault
from tests.conftest import AUTH
from tests.reliability.helpers import (
    Answer,
    assert_idle,
    expected_text,
    gateway_of,
    queued_at,
    read_ndjson,
    read_sse,
    redis_leftovers,
    until,
)
from tests.support.processes import free_port
from tests.support.redis_server import RedisServer
from tests.support.server import ServerThread

FORMATS = ("native-stream", "native-whole", "openai-stream", "openai-whole")


async def ask(client: httpx.AsyncClient, fmt: str, prompt: str, tokens: int, model: str = "llama3.2") -> Answer:
    messages = [{"role": "user", "content": prompt}]
    stream = fmt.endswith("stream")
    if fmt.startswith("native"):
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        body["options"] = {"num_predict": tokens}
        return await read_ndjson(client, "/api/chat", body)
    body = {"model": model, "messages": messages, "stream": stream, "max_tokens": tokens}
    return await read_sse(client, "/v1/chat/completions", body)


def outcome(answer: Answer, fmt: str, prompt: str, tokens: int) -> str:
    """``ok`` for the complete, correct answer; ``error <status>`` for a well-formed refusal; ``broken``
    for a stream that ended with a terminal error. Anything else (a cut stream, a non-JSON body, a
    success without its final chunk, wrong text) fails the test here."""
    if answer.status != 200:
        assert answer.error, f"{fmt}: {answer.status} without a JSON error body: {answer.raw[:200]!r}"
        if fmt.startswith("openai"):
            assert isinstance(answer.items[0]["error"], dict), answer.raw
        if answer.status == 503:
            assert int(answer.headers["retry-after"]) >= 1
        return f"error {answer.status}"
    if answer.error is not None:
        assert answer.items[-1] is not answer.items[0] or len(answer.items) == 1
        for item in answer.items[:-1]:
            assert item != "[DONE]" and not (isinstance(item, dict) and item.get("done")), "final chunk before error"
        return "broken"
    assert answer.text == expected_text(prompt, tokens), (fmt, answer.text)
    last = answer.items[-1]
    if fmt == "native-stream":
        assert last["done"] is True and all(item["done"] is False for item in answer.items[:-1])
    elif fmt == "native-whole":
        assert len(answer.items) == 1 and last["done"] is True
    elif fmt == "openai-stream":
        assert last == "[DONE]" and answer.items[-2]["choices"][0]["finish_reason"] == "length"
    else:
        assert len(answer.items) == 1 and last["choices"][0]["finish_reason"] == "length"
    return "ok"


async def round_of_four(client: httpx.AsyncClient, prompt: str, tokens: int) -> dict[str, str]:
    answers = await asyncio.gather(*(ask(client, fmt, prompt, tokens) for fmt in FORMATS))
    return {fmt: outcome(a, fmt, prompt, tokens) for fmt, a in zip(FORMATS, answers, strict=True)}


async def reached_ollama(emulator: EmulatorServer, count: int) -> None:
    """Wait until ``count`` chat requests are being answered by Ollama (recorded since the last clear)."""
    await until(lambda: sum(r.path == "/api/chat" for r in emulator.emulator.requests) >= count)


async def recovered(client: httpx.AsyncClient, within: float = 10.0) -> None:
    """The gateway serves every format correctly again (retrying while a breaker or backoff clears)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        results = await round_of_four(client, "after the storm", 6)
        if set(results.values()) == {"ok"}:
            return
        assert asyncio.get_running_loop().time() < deadline, f"not recovered: {results}"
        await asyncio.sleep(0.2)


# Each upstream misbehaviour hits all four formats at once. Expected: (streamed, whole) outcome. A
# mid-stream fault (after two lines) cannot touch a non-streamed answer, which is a single line.
CHAT = "/api/chat"
FAULTS = [
    pytest.param(Fault(path=CHAT, kind="busy"), ("error 503", "error 503"), id="503-server-busy"),
    pytest.param(Fault(path=CHAT, kind="http_error", status=500), ("error 500", "error 500"), id="500"),
    pytest.param(Fault(path=CHAT, kind="garbage"), ("error 502", "error 502"), id="garbage-html"),
    pytest.param(Fault(path=CHAT, kind="garbage", message="[1, 2]"), ("error 502", "error 502"), id="garbage-array"),
    pytest.param(Fault(path=CHAT, kind="midstream_error", after_lines=2), ("broken", "ok"), id="error-line"),
    pytest.param(Fault(path=CHAT, kind="close_midline"), ("error 502", "error 502"), id="close-at-once"),
    pytest.param(Fault(path=CHAT, kind="close_midline", after_lines=2), ("broken", "ok"), id="close-mid-line"),
    pytest.param(Fault(path=CHAT, kind="stall", delay=3.0), ("error 502", "error 502"), id="stall-before-first-line"),
    pytest.param(Fault(path=CHAT, kind="stall", delay=3.0, after_lines=2), ("broken", "ok"), id="stall-mid-stream"),
    pytest.param(Fault(path=CHAT, kind="hang_headers", delay=3.0), ("error 504", "error 504"), id="headers-never-come"),
    pytest.param(Fault(path=CHAT, kind="slow", delay=0.15), ("ok", "ok"), id="slowloris-upstream"),
]


@pytest.mark.parametrize(("fault", "expected"), FAULTS)
async def test_an_upstream_fault_gets_every_format_a_well_formed_answer_and_leaks_nothing(
    emulator: EmulatorServer, chaos_host: Callable[..., ServerThread], fault: Fault, expected: tuple[str, str]
) -> None:
    emulator.emulator.parallel = 4
    server = chaos_host(parallel=4)
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        await recovered(client)  # the model is loaded and every format works
        emulator.emulator.inject(fault, times=4)
        results = await round_of_four(client, "under fire", 5)
        assert results == {fmt: expected[0] if fmt.endswith("stream") else expected[1] for fmt in FORMATS}
        await recovered(client)
    await assert_idle(gateway_of(server))


async def test_ollama_killed_mid_stream_and_restarted(
    emulator: EmulatorServer, chaos_host: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.02
    emulator.emulator.parallel = 2
    server = chaos_host(parallel=2)
    gateway = gateway_of(server)
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        await recovered(client)
        emulator.emulator.clear()
        streams = [
            asyncio.ensure_future(ask(client, "native-stream", "long native story", 300)),
            asyncio.ensure_future(ask(client, "openai-stream", "long openai story", 300)),
        ]
        await reached_ollama(emulator, 2)
        queued = asyncio.ensure_future(ask(client, "native-whole", "waiting in line", 4))
        await until(lambda: queued_at(gateway) >= 1)
        await asyncio.sleep(0.1)  # a few tokens out
        emulator.kill()
        native, openai = await asyncio.gather(*streams)
        assert outcome(native, "native-stream", "long native story", 300) == "broken"
        assert outcome(openai, "openai-stream", "long openai story", 300) == "broken"
        assert native.text and openai.text  # tokens had arrived before the crash
        # The queued request got its slot after the crash and found Ollama gone: 503 + Retry-After.
        assert outcome(await queued, "native-whole", "waiting in line", 4) == "error 503"
        await assert_idle(gateway)
        emulator.restart()  # same port, nothing loaded
        await recovered(client)
    await assert_idle(gateway)


async def test_requests_queued_behind_a_crash_are_answered_not_stranded(
    emulator: EmulatorServer, chaos_host: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.02
    server = chaos_host(parallel=1, max_queue=20)
    gateway = gateway_of(server)
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        await recovered(client)
        tasks = [asyncio.ensure_future(ask(client, FORMATS[i % 4], f"crowd {i}", 50)) for i in range(12)]
        await until(lambda: queued_at(gateway) >= 11)
        emulator.kill()
        results = [outcome(a, FORMATS[i % 4], f"crowd {i}", 50) for i, a in enumerate(await asyncio.gather(*tasks))]
        assert set(results) <= {"broken", "error 503"}, results
        await assert_idle(gateway)
        emulator.restart()
        await recovered(client)
    await assert_idle(gateway)


async def test_an_open_breaker_answers_503_with_retry_after_and_closes_when_ollama_returns(
    emulator: EmulatorServer, chaos_host: Callable[..., ServerThread]
) -> None:
    server = chaos_host(breaker_failures=2, breaker_cooldown=0.3, health_interval=0.3)
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        await recovered(client)
        emulator.kill()
        results = [outcome(await ask(client, fmt, "nobody home", 3), fmt, "nobody home", 3) for fmt in FORMATS]
        assert set(results) == {"error 503"}, results
        emulator.restart()
        await recovered(client)
    await assert_idle(gateway_of(server))


async def test_connection_refused_is_503_with_retry_after_until_ollama_listens(
    host_factory: Callable[..., ServerThread],
) -> None:
    port = free_port()  # nothing listens here
    server = host_factory(upstreams=(f"http://127.0.0.1:{port}",), breaker_failures=1000, upstream_retry_after=1.0)
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        results = await round_of_four(client, "anyone?", 3)
        assert set(results.values()) == {"error 503"}, results
        assert (await client.get("/_gateway/health")).status_code == 503
        with EmulatorServer(port=port):
            await recovered(client)
    await assert_idle(gateway_of(server))


async def test_an_unresolvable_upstream_name_is_503_and_the_gateway_stays_responsive(
    host_factory: Callable[..., ServerThread],
) -> None:
    # RFC 6761: ".invalid" never resolves, so nothing leaves this machine.
    server = host_factory(upstreams=("http://ollama.invalid:11434",), breaker_failures=1000)
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        for _ in range(3):
            results = await round_of_four(client, "where are you", 3)
            assert set(results.values()) == {"error 503"}, results
        health = await client.get("/_gateway/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
    await assert_idle(gateway_of(server))


async def _wait_redis_up(client: httpx.AsyncClient) -> None:
    for _ in range(100):
        if (await client.get("/_gateway/health")).json().get("redis") == "up":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway did not reconnect to Redis")


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
async def test_redis_killed_mid_stream_and_restarted(
    emulator: EmulatorServer, chaos_host: Callable[..., ServerThread], redis_server: RedisServer, fail_open: bool
) -> None:
    emulator.emulator.token_interval = 0.01
    emulator.emulator.parallel = 2
    prefix = f"chaos-{fail_open}"
    server = chaos_host(
        parallel=2, redis_url=redis_server.url, redis_prefix=prefix, redis_fail_open=fail_open, lease_ttl=1.0
    )
    gateway = gateway_of(server)
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        await recovered(client)
        # Two streams hold Redis leases and two wait in the shared queue when Redis dies.
        tasks = [asyncio.ensure_future(ask(client, FORMATS[i], f"held {i}", 60)) for i in range(4)]
        await until(lambda: queued_at(gateway) >= 2)
        redis_server.kill()
        answers = await asyncio.gather(*tasks)
        results = [outcome(a, FORMATS[i], f"held {i}", 60) for i, a in enumerate(answers)]
        assert results[:2] == ["ok", "ok"], results  # in flight: unaffected by the shared store
        if fail_open:
            assert results[2:] == ["ok", "ok"], results  # queued: served on local limits
            assert (await round_of_four(client, "redis is down", 4)) == dict.fromkeys(FORMATS, "ok")
        else:
            assert set(results[2:]) <= {"ok", "error 503"}, results
            assert set((await round_of_four(client, "redis is down", 4)).values()) == {"error 503"}
        await assert_idle(gateway)
        redis_server.start()  # same port, empty: the old leases are gone with it
        await _wait_redis_up(client)
        await recovered(client)
    await assert_idle(gateway)
    assert redis_leftovers(redis_server.url, prefix) == {}
