"""The npm ``ollama`` client under Node gets from the gateway what it gets from the real Ollama itself.

``node/clients.mjs`` makes the same calls (chat and generate, streamed and not, embed, two streamed
tool calls, think, an unknown model) against one URL and prints what the client returned; it runs
once against the server and once against the gateway with the API key in ``headers``. The client is
installed from ``node/package-lock.json`` when ``node/node_modules`` is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ollama_asgi.testing.real import RealOllama
from tests.conftest import API_KEY
from tests.real.compare import SENTENCE, Pair, gateway_url, stable

NODE_DIR = Path(__file__).parent / "node"
CALLS = ("chat", "chat_stream", "generate", "generate_stream", "embed", "tools_stream", "think", "unknown_model")


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = "no node/npm on PATH: the npm ollama client is not tried"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (required under CI=true; make test installs them)")
        pytest.skip(message)
    if not (NODE_DIR / "node_modules" / "ollama").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True, timeout=300
        )
    return node


def run_clients(node: str, url: str, *key: str) -> dict[str, Any]:
    done = subprocess.run(
        [node, "clients.mjs", url, *key], cwd=NODE_DIR, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def results(node: str, ollama: RealOllama) -> Iterator[Pair]:
    with gateway_url(ollama) as url:
        yield Pair(run_clients(node, ollama.url), run_clients(node, url, API_KEY))


@pytest.mark.parametrize("call", CALLS)
def test_node_client_call_answers_as_ollama(results: Pair, call: str) -> None:
    assert stable(results.gateway[call]) == stable(results.direct[call])


def test_node_client_chat_is_the_sentence(results: Pair) -> None:
    assert results.direct["chat"]["message"]["content"] == SENTENCE
    assert "".join(c["message"]["content"] for c in results.gateway["chat_stream"]) == SENTENCE


def test_node_client_streamed_tool_calls_keep_their_index(results: Pair) -> None:
    for answer in results:
        calls = [t["function"] for c in answer["tools_stream"] for t in c["message"].get("tool_calls", [])]
        assert [(f["name"], f["arguments"], f["index"]) for f in calls] == [
            ("get_weather", {"city": "Paris"}, 0),
            ("get_weather", {"city": "London"}, 1),
        ]


def test_node_client_sees_ollamas_errors_through_the_gateway(results: Pair) -> None:
    assert results.gateway["think"] == {"error": '"tiny" does not support thinking', "status_code": 400}
    assert results.gateway["unknown_model"] == {"error": "model 'nope' not found", "status_code": 404}
