"""A client that stops reading a stream, against the real server: the generation stops, the slot frees."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import orjson

from ollama_asgi.testing.real import RealOllama
from tests.conftest import API_KEY, AUTH
from tests.support.server import ServerThread

# One line per request the server finished, written when its handler returns.
_GENERATE_DONE = re.compile(r'\[GIN\] .*\| +(\d+) \|.*POST +"/api/generate"')


def test_a_client_that_stops_reading_stops_the_generation_and_frees_the_slot(
    own_ollama: Callable[..., RealOllama], gateway_for: Callable[..., ServerThread]
) -> None:
    server = own_ollama(("loop",), OLLAMA_NUM_PARALLEL="1")
    made = server.request(
        "POST", "/api/create", {"model": "loop-1t", "from": "loop", "parameters": {"num_thread": 1}, "stream": False}
    )
    assert made[0] == 200, made
    host = gateway_for(server, parallel=1, send_timeout=1.0, queue_timeout=120)
    # Linux grows a connection's send buffer up to 4 MB (tcp_wmem), which the loop model, at about
    # 10 KB/s on one thread, takes minutes to fill before any send can wait; accepted sockets
    # inherit a fixed 32 KB from the listener, so the wait starts within seconds.
    host.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    parts = urlsplit(host.url)
    body = orjson.dumps({"model": "loop-1t", "prompt": "count", "options": {"num_predict": 1_000_000}})
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.settimeout(60)
    try:
        stalled.connect((parts.hostname, parts.port))
        head = f"POST /llm/api/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        stalled.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert stalled.recv(12).startswith(b"HTTP/1.1 200")  # and then reads nothing more
        finished_before = len(_GENERATE_DONE.findall(server.log()))  # the gateway's load of the model
        started = time.monotonic()
        while len(_GENERATE_DONE.findall(server.log())) == finished_before:  # the server stopped generating
            assert time.monotonic() - started < 60, "the server still generates for a client that reads nothing"
            time.sleep(0.05)
        stopped_after = time.monotonic() - started
        answer = httpx.post(
            host.url + "/llm/api/generate",
            json={"model": "loop-1t", "prompt": "count", "stream": False, "options": {"num_predict": 3}},
            headers=AUTH,
            timeout=30,
        )
    finally:
        stalled.close()
    assert answer.status_code == 200 and answer.json()["eval_count"] == 3
    print(f"generation stopped {stopped_after:.1f}s after the client stopped reading")
