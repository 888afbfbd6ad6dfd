"""Streaming relay over real sockets: framing, no buffering, disconnects, timeouts, broken upstreams."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import ollama
import openai
import orjson
import pytest

from ollama_asgi.testing import EmulatorServer, Fault
from tests.conftest import API_KEY, AUTH
from tests.support.rawhttp import request, wait_until
from tests.support.server import ServerThread

CHAT = json.dumps(
    {"model": "llama3.2", "messages": [{"role": "user", "content": "a b c d"}], "options": {"num_predict": 40}}
).encode()


def _assert_whole_lines(chunks: list[bytes]) -> list[dict[str, object]]:
    lines = []
    for chunk in chunks:
        assert chunk.endswith(b"\n"), f"chunk cut mid-line: {chunk!r}"
        lines.extend(orjson.loads(line) for line in chunk.splitlines())
    return lines


@pytest.mark.parametrize("chunking", ["split", "coalesce"])
def test_lines_split_or_merged_upstream_reach_the_client_whole(
    emulator: EmulatorServer, llm_url: str, chunking: str
) -> None:
    emulator.emulator.chunking = chunking
    response = request(llm_url + "/api/chat", body=CHAT, headers=AUTH)
    assert response.status == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["x-accel-buffering"] == "no"
    lines = _assert_whole_lines(response.chunks())
    assert len(lines) == 41 and lines[-1]["done"] is True
    assert "".join(line["message"]["content"] for line in lines) == " ".join(["a", "b", "c", "d"] * 10)  # type: ignore[index]


def test_gzip_in_the_host_does_not_hold_back_the_stream(emulator: EmulatorServer, llm_url: str) -> None:
    emulator.emulator.token_interval = 0.05
    response = request(llm_url + "/api/chat", body=CHAT, headers={**AUTH, "Accept-Encoding": "gzip"})
    assert response.headers.get("content-encoding") in (None, "identity")
    started = time.monotonic()
    first = next(response.iter_chunks())
    assert time.monotonic() - started < 1.0  # the whole answer takes 2 s
    assert orjson.loads(first.splitlines()[0])["done"] is False
    response.close()


def test_ten_thousand_chunks_arrive_complete_and_in_order(llm_url: str) -> None:
    body = json.dumps({"model": "llama3.2", "prompt": "x", "options": {"num_predict": 10000}}).encode()
    count = 0
    with httpx.stream("POST", llm_url + "/api/generate", content=body, headers=AUTH, timeout=60) as response:
        for line in response.iter_lines():
            chunk = orjson.loads(line)
            count += 1
    assert count == 10001
    assert chunk["done"] is True and chunk["eval_count"] == 10000


def test_sse_events_are_relayed_whole(emulator: EmulatorServer, llm_url: str) -> None:
    emulator.emulator.chunking = "split"
    body = json.dumps({"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "p q"}]}).encode()
    response = request(llm_url + "/v1/chat/completions", body=body, headers=AUTH)
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = response.chunks()
    for chunk in chunks:
        assert chunk.endswith(b"\n\n"), chunk
    events = [e for c in chunks for e in c.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"


def test_client_disconnect_cancels_the_upstream_generation(emulator: EmulatorServer, llm_url: str) -> None:
    emulator.emulator.token_interval = 0.05  # 40 tokens: 2 s if nobody stops it
    response = request(llm_url + "/api/chat", body=CHAT, headers=AUTH)
    chunks = response.iter_chunks()
    next(chunks)
    assert emulator.emulator.stats.cancellations == 0
    response.close()
    elapsed = wait_until(lambda: emulator.emulator.stats.cancellations == 1, timeout=1.5)
    assert elapsed < 1.0
    assert emulator.emulator.stats.active == 0


def test_disconnect_while_waiting_for_a_non_streamed_answer_cancels_too(emulator: EmulatorServer, llm_url: str) -> None:
    emulator.emulator.token_interval = 0.05
    body = json.dumps({"model": "llama3.2", "prompt": "x", "stream": False, "options": {"num_predict": 60}}).encode()
    response = request(llm_url + "/api/generate", body=body, headers=AUTH)
    wait_until(lambda: emulator.emulator.stats.active == 1)
    response.close()
    wait_until(lambda: emulator.emulator.stats.cancellations == 1, timeout=1.5)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_gone_at_once_is_noticed_although_the_gateway_watches_late(
    emulator: EmulatorServer, llm_url: str, stream: bool
) -> None:
    """The disconnect listener starts after a short delay (cheaper for quick requests); a client
    that leaves before then still stops the generation, within that delay."""
    emulator.emulator.token_interval = 0.05
    body = {"model": "llama3.2", "prompt": "x", "stream": stream, "options": {"num_predict": 60}}  # 3 s
    response = request(llm_url + "/api/generate", body=json.dumps(body).encode(), headers=AUTH)
    response.close()  # before the gateway has even reached Ollama
    stats = emulator.emulator.stats
    time.sleep(0.3)  # well past the watch delay, well short of the 3 s generation
    assert stats.active == 0 and stats.completed == 0


def test_idle_timeout_ends_the_stream_with_an_error_line(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(read_timeout=0.3)
    emulator.emulator.inject(Fault(path="/api/chat", kind="stall", after_lines=2, delay=3.0))
    response = request(server.url + "/llm/api/chat", body=CHAT, headers=AUTH)
    lines = _assert_whole_lines(response.chunks())
    assert len(lines) == 3
    assert "read timeout" in str(lines[-1]["error"])


def test_long_streams_are_not_cut_by_a_total_limit(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(read_timeout=0.3)
    emulator.emulator.token_interval = 0.1  # 20 tokens: 2 s in all, far beyond the idle limit
    body = json.dumps({"model": "llama3.2", "prompt": "x", "options": {"num_predict": 20}}).encode()
    lines = _assert_whole_lines(request(server.url + "/llm/api/generate", body=body, headers=AUTH).chunks())
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 20


def test_upstream_dying_mid_line_ends_with_an_error_line(emulator: EmulatorServer, llm_url: str) -> None:
    emulator.emulator.inject(Fault(path="/api/chat", kind="close_midline", after_lines=3))
    lines = _assert_whole_lines(request(llm_url + "/api/chat", body=CHAT, headers=AUTH).chunks())
    assert len(lines) == 4
    assert all("message" in line for line in lines[:3])
    assert "error" in lines[-1]


def test_upstream_error_line_is_passed_through(emulator: EmulatorServer, llm_url: str) -> None:
    emulator.emulator.inject(
        Fault(
            path="/api/chat",
            kind="midstream_error",
            after_lines=2,
            message="an error was encountered while running the model",
        )
    )
    lines = _assert_whole_lines(request(llm_url + "/api/chat", body=CHAT, headers=AUTH).chunks())
    assert lines[-1] == {"error": "an error was encountered while running the model"}


def test_openai_stream_breaking_mid_way_raises_in_the_openai_client(emulator: EmulatorServer, llm_url: str) -> None:
    emulator.emulator.inject(Fault(path="/api/chat", kind="close_midline", after_lines=2))
    client = openai.OpenAI(base_url=llm_url + "/v1", api_key=API_KEY)
    stream = client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "a b"}], stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_upstream_http_errors_keep_status_and_body(emulator: EmulatorServer, llm_url: str) -> None:
    emulator.emulator.inject(Fault(path="/api/chat", kind="busy"))
    response = httpx.post(llm_url + "/api/chat", content=CHAT, headers=AUTH)
    assert response.status_code == 503
    assert response.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}


def test_host_cookies_and_authorization_never_reach_ollama(emulator: EmulatorServer, llm_url: str) -> None:
    httpx.post(
        llm_url + "/api/chat",
        content=CHAT,
        headers={**AUTH, "Cookie": "session=secret", "Origin": "https://evil.example", "X-Forwarded-For": "1.2.3.4"},
    )
    recorded = [r for r in emulator.emulator.requests if r.path == "/api/chat"][-1]
    for header in ("cookie", "authorization", "origin", "x-forwarded-for"):
        assert header not in recorded.headers
    assert recorded.headers["host"] == f"127.0.0.1:{emulator.port}"
    sent = orjson.loads(CHAT)
    assert recorded.json is not None
    assert recorded.json["messages"] == sent["messages"]
    assert recorded.json["options"]["num_predict"] == 40
    assert recorded.json["options"]["num_ctx"] >= 2048  # always explicit, never Ollama's default


def test_without_lifecycle_requests_are_forwarded_byte_for_byte(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(lifecycle=False)
    response = httpx.post(server.url + "/llm/api/chat", content=CHAT, headers=AUTH)
    assert response.status_code == 200
    (recorded,) = [r for r in emulator.emulator.requests if r.path == "/api/chat"]
    assert recorded.body == CHAT


def test_a_stream_cut_cleanly_before_its_final_chunk_ends_with_an_error_line(
    emulator: EmulatorServer, llm_url: str
) -> None:
    emulator.emulator.inject(Fault(path="/api/chat", kind="end_early", after_lines=3))
    lines = _assert_whole_lines(request(llm_url + "/api/chat", body=CHAT, headers=AUTH).chunks())
    assert len(lines) == 4 and all("message" in line for line in lines[:3])
    assert "before its final chunk" in str(lines[-1]["error"])


# -- the final chunk as Ollama, or anything speaking its protocol, may write it -----------------------

TOKENS = b'{"model":"m","message":{"role":"assistant","content":"hi"},"done":false}\n'
SPACED_FINAL = b'{"model": "m", "message": {"role": "assistant", "content": ""}, "done": true, "eval_count": 1}\n'
REORDERED_FINAL = b'{"done":true,"done_reason":"stop","model":"m","message":{"role":"assistant","content":""}}\n'


def scripted_ollama(lines: list[bytes], *, then_break: bool = False) -> Any:
    """An upstream that answers ``/api/chat`` with ``lines``, one write each, and ``/`` as Ollama does;
    ``then_break`` drops the connection instead of ending the body."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"] != "/api/chat":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"Ollama is running"})
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-ndjson")]}
        )
        for line in lines:
            await send({"type": "http.response.body", "body": line, "more_body": True})
        if then_break:
            raise ConnectionResetError("dropped on purpose")
        await send({"type": "http.response.body", "body": b""})

    return app


@pytest.fixture
def scripted(host_factory: Callable[..., ServerThread]) -> Iterator[Callable[..., str]]:
    """``scripted(lines)``: the URL of a gateway relaying, untouched, an upstream that writes ``lines``."""
    upstreams: list[ServerThread] = []

    def start(lines: list[bytes], *, then_break: bool = False) -> str:
        upstream = ServerThread(scripted_ollama(lines, then_break=then_break), lifespan="off").start()
        upstreams.append(upstream)
        return host_factory(upstreams=(upstream.url,), lifecycle=False).url + "/llm"

    yield start
    for upstream in upstreams:
        upstream.stop()


@pytest.mark.parametrize("final", [SPACED_FINAL, REORDERED_FINAL], ids=["spaced", "reordered"])
def test_a_final_chunk_however_written_ends_the_stream_without_an_error_line(
    scripted: Callable[..., str], final: bytes
) -> None:
    url = scripted([TOKENS, TOKENS, final])
    lines = _assert_whole_lines(request(url + "/api/chat", body=CHAT, headers=AUTH).chunks())
    assert lines == [orjson.loads(TOKENS), orjson.loads(TOKENS), orjson.loads(final)]


def test_a_final_chunk_sharing_a_write_with_tokens_ends_the_stream_cleanly(
    scripted: Callable[..., str],
) -> None:
    url = scripted([TOKENS + TOKENS + SPACED_FINAL])
    lines = _assert_whole_lines(request(url + "/api/chat", body=CHAT, headers=AUTH).chunks())
    assert len(lines) == 3 and lines[-1]["done"] is True


def test_the_ollama_client_reads_a_stream_with_a_spaced_final_chunk_to_its_end(
    scripted: Callable[..., str],
) -> None:
    url = scripted([TOKENS, SPACED_FINAL])
    client = ollama.Client(host=url, headers=AUTH)
    parts = list(client.chat(model="m", messages=[{"role": "user", "content": "x"}], stream=True))
    assert [part.done for part in parts] == [False, True]


def test_a_line_that_only_mentions_done_true_is_not_taken_for_the_final_chunk(
    scripted: Callable[..., str],
) -> None:
    token = b'{"model":"m","message":{"role":"assistant","content":"\\"done\\":true"},"done":false}\n'
    url = scripted([TOKENS, token])
    lines = _assert_whole_lines(request(url + "/api/chat", body=CHAT, headers=AUTH).chunks())
    assert len(lines) == 3 and "before its final chunk" in str(lines[-1]["error"])


def test_a_connection_lost_after_the_final_chunk_adds_nothing_after_it(scripted: Callable[..., str]) -> None:
    url = scripted([TOKENS, REORDERED_FINAL], then_break=True)
    lines = _assert_whole_lines(request(url + "/api/chat", body=CHAT, headers=AUTH).chunks())
    assert lines == [orjson.loads(TOKENS), orjson.loads(REORDERED_FINAL)]


def _stalled_reader(url: str, body: bytes) -> socket.socket:
    """A client that sends its request, reads the response head, then never reads again."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills at once
    sock.settimeout(10)
    sock.connect((parts.hostname, parts.port))
    head = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.hostname}\r\nAuthorization: Bearer {API_KEY}\r\n"
    sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert sock.recv(12).startswith(b"HTTP/1.1 200")
    return sock


ENDLESS = json.dumps({"model": "llama3.2", "prompt": "x", "options": {"num_predict": 60_000}}).encode()


@pytest.mark.parametrize("path", ["/api/generate", "/v1/completions"])
def test_a_client_that_stops_reading_loses_its_slot_and_its_generation(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread], path: str
) -> None:
    """Without a send timeout the relay waits on the client's full window for ever, holding the slot."""
    host = host_factory(parallel=1, send_timeout=0.5, queue_timeout=30)
    url = host.url + "/llm"
    # Loaded first, with the same context, so the gateway's load does not take the fault below.
    options = {"num_predict": 60_000, "stop": ["x"]}  # the echo of "x" stops at once
    warm = {"model": "llama3.2", "prompt": "x", "stream": False, "options": options}
    assert httpx.post(url + "/api/generate", json=warm, headers=AUTH, timeout=30).status_code == 200
    # 59,000 lines (6 MB: more than every buffer between Ollama and the client), then Ollama goes on
    # generating slowly, as the loop model does, so its request is still running when the client stalls.
    emulator.emulator.inject(Fault(path="/api/generate", kind="stall", after_lines=59_000, delay=60))
    body = ENDLESS
    if path.startswith("/v1"):
        body = json.dumps({"model": "llama3.2", "prompt": "x", "stream": True, "max_tokens": 60_000}).encode()
    stalled = _stalled_reader(url + path, body)
    try:
        wait_until(lambda: emulator.emulator.stats.cancellations == 1, timeout=20)
        assert emulator.emulator.stats.active == 0
        answer = httpx.post(
            url + "/api/generate",
            json={"model": "llama3.2", "prompt": "y", "stream": False, "options": {"num_predict": 3}},
            headers=AUTH,
            timeout=10,
        )
        assert answer.status_code == 200 and answer.json()["done"] is True
    finally:
        stalled.close()


def test_a_slow_reader_that_keeps_reading_is_not_cut(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    """The send timeout bounds a send without progress, not a slow client."""
    emulator.emulator.token_interval = 0.001
    host = host_factory(send_timeout=0.5)
    body = json.dumps({"model": "llama3.2", "prompt": "x", "options": {"num_predict": 3000}}).encode()
    sock = _stalled_reader(host.url + "/llm/api/generate", body)
    received = b""
    try:
        while not received.endswith(b"0\r\n\r\n"):
            time.sleep(0.05)  # about 80 KB/s: the window is full most of the time
            data = sock.recv(4096)
            assert data, "the gateway closed the connection"
            received += data
    finally:
        sock.close()
    assert b'"done":true' in received and b'"error"' not in received
    assert emulator.emulator.stats.cancellations == 0
