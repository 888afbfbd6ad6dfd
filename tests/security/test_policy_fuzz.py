"""Whatever an ordinary caller writes, what reaches Ollama is within the policy the gateway checked.

Ollama reads bodies with Go's ``encoding/json``: object keys match struct fields case-insensitively
(with Unicode simple folding: the Kelvin sign is a ``k``, the long s an ``s``) and the last of
several spellings wins. Generated bodies spell the fields the policy rests on (``model``,
``keep_alive``, ``options`` and its ``num_ctx`` and runner options, ``shift``) in every such way and
order; each body that reaches the upstream is then read as Ollama would read it and must name an
allowed model, carry the gateway's ``keep_alive``, a ``num_ctx`` within the cap and no runner option
of the caller's.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_asgi.testing import EmulatorServer
from tests.conftest import AUTH
from tests.support.server import ServerThread

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
ALLOWED, FORBIDDEN = "llama3.2", "qwen2.5:0.5b"
MAX_NUM_CTX = 8192
GATEWAY_KEEP_ALIVE = "30m"
RUNNER_OPTIONS = ("num_batch", "num_thread", "use_mmap", "num_gpu", "main_gpu")
# Go's simple case folding beyond ASCII: U+212A KELVIN SIGN is k, U+017F LATIN SMALL LETTER LONG S is s.
_GO_FOLD = str.maketrans({"\u212a": "k", "\u017f": "s"})
_nonce = itertools.count()


def spellings(name: str) -> st.SearchStrategy[str]:
    """Every way of writing ``name`` that Go's decoder reads as ``name``."""
    choices = []
    for char in name:
        options = {char, char.upper()}
        if char == "k":
            options.add("\u212a")
        if char == "s":
            options.add("\u017f")
        choices.append(st.sampled_from(sorted(options)))
    return st.tuples(*choices).map("".join)


def go_read(pairs: list[tuple[str, Any]], field: str) -> Any:
    """The value Go's decoder gives struct field ``field``: the last key that folds to it."""
    found = None
    for key, value in pairs:
        if key.translate(_GO_FOLD).lower() == field:
            found = value
    return found


def encode(pairs: list[tuple[str, Any]]) -> bytes:
    """A JSON object with its keys in order and duplicates kept (a dict would merge them)."""
    return b"{" + b",".join(orjson.dumps(k) + b":" + _value(v) for k, v in pairs) + b"}"


class Pairs(list[tuple[str, Any]]):
    """A JSON object to write as these pairs."""


def _value(value: object) -> bytes:
    return encode(value) if isinstance(value, Pairs) else orjson.dumps(value)


def decode(raw: bytes) -> list[tuple[str, Any]]:
    """Every object as its list of pairs, in order, duplicates kept."""
    pairs: list[tuple[str, Any]] = json.loads(raw, object_pairs_hook=list)
    return pairs


option_pairs = st.lists(
    st.one_of(
        st.tuples(spellings("num_ctx"), st.integers(min_value=1, max_value=4 * MAX_NUM_CTX)),
        st.tuples(st.sampled_from(RUNNER_OPTIONS).flatmap(spellings), st.integers(min_value=0, max_value=8)),
        st.tuples(spellings("num_predict"), st.integers(min_value=1, max_value=3)),
    ),
    max_size=4,
).map(Pairs)
top_pairs = st.lists(
    st.one_of(
        st.tuples(spellings("model"), st.sampled_from([ALLOWED, FORBIDDEN])),
        st.tuples(spellings("keep_alive"), st.sampled_from([0, -1, "0", "-1m", "87600h", "5m"])),
        st.tuples(spellings("options"), option_pairs),
        st.tuples(spellings("shift"), st.booleans()),
    ),
    min_size=1,
    max_size=5,
)


@pytest.fixture
def strict_host(host_factory: Callable[..., ServerThread]) -> ServerThread:
    return host_factory(allowed_models=(ALLOWED,), max_num_ctx=MAX_NUM_CTX, keep_alive=GATEWAY_KEEP_ALIVE)


@pytest.fixture
def client(strict_host: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=strict_host.url + "/llm", timeout=15) as client:
        yield client


@FUZZ
@given(path=st.sampled_from(["/api/generate", "/api/chat"]), pairs=top_pairs)
def test_every_body_that_reaches_ollama_is_within_the_checked_policy(
    client: httpx.Client, emulator: EmulatorServer, path: str, pairs: list[tuple[str, Any]]
) -> None:
    marker = f"policy-{next(_nonce)}"
    said = ("prompt", marker) if path == "/api/generate" else ("messages", [{"role": "user", "content": marker}])
    # The allowed model first, so that a body the gateway reads as valid always names one.
    raw = encode([("model", ALLOWED), said, ("stream", False), *pairs])

    response = client.post(path, content=raw, headers=AUTH)
    assert response.status_code < 500, response.text
    forwarded = [r.body for r in emulator.emulator.requests if marker.encode() in r.body]
    if response.status_code != 200:
        assert not forwarded, "a refused request reached Ollama"
        return
    assert forwarded
    for body in forwarded:
        top = decode(body)
        model = go_read(top, "model")
        assert model in (ALLOWED, f"{ALLOWED}:latest"), (raw, body)
        assert go_read(top, "keep_alive") == GATEWAY_KEEP_ALIVE, (raw, body)
        assert go_read(top, "shift") is None, (raw, body)
        options = dict(go_read(top, "options") or [])  # a map in Go: exact keys, the last one wins
        assert 1 <= options.get("num_ctx", 1) <= MAX_NUM_CTX, (raw, body)
        assert not set(options) & set(RUNNER_OPTIONS), (raw, body)
