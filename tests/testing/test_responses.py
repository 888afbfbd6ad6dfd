"""Response framing: one body message per line, or split / coalesced on request."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from ollama_asgi.testing import OllamaEmulator
from ollama_asgi.types import Message


async def _body_messages(emulator: OllamaEmulator, body: dict[str, Any]) -> list[bytes]:
    """Call the app directly and return the body of each ``http.response.body`` message."""
    sent: list[dict[str, Any]] = []
    delivered = False
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(dict(message))
        if message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/generate",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "server": ("127.0.0.1", 11434),
    }
    await emulator(scope, receive, send)
    return [m["body"] for m in sent if m["type"] == "http.response.body" and m["body"]]


GENERATE = {"model": "llama3.2", "prompt": "a b", "options": {"num_predict": 6}}


async def test_line_chunking_sends_one_message_per_line() -> None:
    messages = await _body_messages(OllamaEmulator(), GENERATE)
    assert len(messages) == 7
    assert all(m.endswith(b"\n") and m.count(b"\n") == 1 for m in messages)


async def test_split_chunking_splits_every_line_in_two() -> None:
    messages = await _body_messages(OllamaEmulator(chunking="split"), GENERATE)
    assert len(messages) == 14
    assert not messages[0].endswith(b"\n")
    assert b"".join(messages).count(b"\n") == 7


async def test_coalesce_chunking_joins_lines() -> None:
    messages = await _body_messages(OllamaEmulator(chunking="coalesce"), GENERATE)
    assert len(messages) < 7
    assert b"".join(messages).count(b"\n") == 7


def test_unknown_chunking_is_refused() -> None:
    with pytest.raises(ValueError, match="chunking"):
        OllamaEmulator(chunking="bytes")  # type: ignore[arg-type]
