"""What the gateway caches of a backend's models follows the changes made to its store through it."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from ollama_asgi.testing import EmulatorServer
from tests.conftest import ADMIN, AUTH
from tests.support.server import ServerThread


def _shows(emulator: EmulatorServer, model: str) -> int:
    return sum(1 for r in emulator.emulator.requests if r.path == "/api/show" and r.json.get("model") == model)


def _chat(llm: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    return httpx.post(llm + "/api/chat", json=body, headers=AUTH, timeout=30)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/copy", {"source": "qwen2.5:0.5b", "destination": "mine"}),
        ("POST", "/api/pull", {"model": "mine", "stream": False}),
        ("POST", "/api/create", {"model": "mine", "from": "qwen2.5:0.5b", "stream": False}),
    ],
)
def test_a_store_change_through_the_gateway_makes_it_read_the_models_facts_again(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread], method: str, path: str, body: dict[str, object]
) -> None:
    llm = host_factory().url + "/llm"
    copied = httpx.post(llm + "/api/copy", json={"source": "llama3.2", "destination": "mine"}, headers=ADMIN)
    assert copied.status_code == 200
    assert _chat(llm, "mine").status_code == 200
    assert _chat(llm, "mine").status_code == 200
    assert _shows(emulator, "mine") == 1  # facts are cached between requests
    qwen = emulator.emulator.registry.get("qwen2.5:0.5b")
    assert qwen is not None
    emulator.emulator.registry.add(qwen.renamed("mine"))  # what a pull of "mine" fetches
    changed = httpx.request(method, llm + path, json=body, headers=ADMIN, timeout=30)
    assert changed.status_code == 200, changed.text
    assert _chat(llm, "mine").status_code == 200
    assert _shows(emulator, "mine") == 2


def test_a_model_deleted_through_the_gateway_is_not_found_from_then_on(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    llm = host_factory().url + "/llm"
    assert httpx.post(llm + "/api/copy", json={"source": "llama3.2", "destination": "mine"}, headers=ADMIN).is_success
    assert _chat(llm, "mine").status_code == 200
    deleted = httpx.request("DELETE", llm + "/api/delete", json={"model": "mine"}, headers=ADMIN)
    assert deleted.status_code == 200
    answer = _chat(llm, "mine")
    assert answer.status_code == 404 and _shows(emulator, "mine") == 2
