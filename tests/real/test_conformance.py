"""Differential conformance: the gateway and the emulator answer as real Ollama does.

Each check sends one request to the real server directly and to the other side (the gateway in
front of that server, or the emulator set up with the same models), and the two answers must be
equal in canonical form (see :mod:`ollama_asgi.testing.conformance`), apart from the differences
the check names from the table there. ``docs/conformance.md`` is written from that table and
from ``CHECKS``; the committed copy is compared with a fresh rendering and, when stale, rewritten
and the test fails, so the document can only say what this suite checks.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ollama_asgi import OllamaGateway, Settings
from ollama_asgi.testing import EmulatedModel, EmulatorServer, Fault
from ollama_asgi.testing.conformance import (
    DIFFERENCES,
    Answer,
    Planned,
    Side,
    compare,
    field_order,
    framing_faults,
    render,
)
from ollama_asgi.testing.gguf_models import FIXTURES
from ollama_asgi.testing.real import RealOllama
from ollama_asgi.testing.wire import EMULATED_VERSION
from tests.conftest import ADMIN, ADMIN_KEY, API_KEY, AUTH
from tests.support.hosts import starlette_host
from tests.support.server import ServerThread

DOC = Path(__file__).parents[2] / "docs" / "conformance.md"
ORACLE = "v0.24.0"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HI = [{"role": "user", "content": "hi"}]
RUNNER_DIED = "an error was encountered while running the model: unexpected EOF"


@dataclass(frozen=True)
class Check:
    """One request, and the table's differences each side may show in its answer."""

    name: str
    method: str
    path: str
    body: object = None
    gateway: tuple[str, ...] = ()
    emulator: tuple[str, ...] = ()
    known: Mapping[str, str] = field(default_factory=dict)
    """Known defects, by side (``"gateway"``: the answer; ``"gateway order"``: its field order): the
    test is expected to fail, strictly, until the defect is fixed."""
    admin: bool = False
    """Sent to the gateway with the admin key (requests only admins may make)."""

    @property
    def request(self) -> str:
        if self.body is None:
            return f"`{self.method} {self.path}`"
        body = self.body if isinstance(self.body, bytes) else orjson.dumps(self.body)
        text = body.decode()
        return f"`{self.method} {self.path}` `{text[:90] + '…' if len(text) > 90 else text}`"

    def planned(self) -> Planned:
        return Planned(self.name, self.request, self.gateway, self.emulator, self.known)


_STREAM = ("stream_headers",)
_COUNTS = ("token_counts", "chunking")
_EMBED = ("token_counts", "embedding_values")

CHECKS: tuple[Check, ...] = (
    # -- answers ------------------------------------------------------------------------------------
    Check("generate", "POST", "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}, (), _COUNTS),
    Check("generate, streamed", "POST", "/api/generate", {"model": "tiny", "prompt": "hi"}, _STREAM, _COUNTS),
    Check(
        "generate, ended by num_predict",
        "POST",
        "/api/generate",
        {"model": "loop", "prompt": "hi", "options": {"num_predict": 3}, "stream": False},
        (),
        _COUNTS,
    ),
    Check(
        "generate, cut by a stop string",
        "POST",
        "/api/generate",
        {"model": "tiny", "prompt": "hi", "options": {"stop": ["fox"]}, "stream": False},
        (),
        _COUNTS,
    ),
    Check("generate, load only", "POST", "/api/generate", {"model": "tiny"}),
    Check("chat, load only", "POST", "/api/chat", {"model": "tiny", "messages": []}),
    Check("generate, unload", "POST", "/api/generate", {"model": "loop", "keep_alive": 0}, admin=True),
    Check(
        'chat, unload with keep_alive "0"',
        "POST",
        "/api/chat",
        {"model": "loop", "messages": [], "keep_alive": "0"},
        admin=True,
    ),
    Check("chat", "POST", "/api/chat", {"model": "tiny", "messages": HI, "stream": False}, (), _COUNTS),
    Check("chat, JSON keys in any case", "POST", "/api/chat", {"Model": "tiny", "MESSAGES": []}),
    Check("chat, a null option", "POST", "/api/chat", {"model": "tiny", "messages": [], "options": {"mirostat": None}}),
    Check(
        "chat, a null message",
        "POST",
        "/api/chat",
        {"model": "tiny", "messages": [None, *HI], "stream": False},
        (),
        _COUNTS,
    ),
    Check(
        "chat, options Ollama no longer reads, of any type",
        "POST",
        "/api/chat",
        {"model": "tiny", "messages": [], "options": {"mirostat": "x", "tfs_z": [], "penalize_newline": 3}},
    ),
    Check("chat, streamed", "POST", "/api/chat", {"model": "tiny", "messages": HI}, _STREAM, _COUNTS),
    Check(
        "chat, tools the model does not call",
        "POST",
        "/api/chat",
        {"model": "tiny", "messages": HI, "tools": [WEATHER_TOOL], "stream": False},
        (),
        _COUNTS,
    ),
    Check(
        "chat, a call-shaped answer without tools",
        "POST",
        "/api/chat",
        {"model": "tools", "messages": HI, "stream": False},
        (),
        _COUNTS,
    ),
    Check(
        "chat, one tool call",
        "POST",
        "/api/chat",
        {"model": "tools", "messages": HI, "tools": [WEATHER_TOOL], "stream": False},
        (),
        _COUNTS,
    ),
    Check(
        "chat, two tool calls streamed",
        "POST",
        "/api/chat",
        {"model": "tools2", "messages": HI, "tools": [WEATHER_TOOL]},
        _STREAM,
        _COUNTS,
    ),
    Check("embed", "POST", "/api/embed", {"model": "tiny", "input": ["hi", "there"]}, (), _EMBED),
    Check("embed, no input", "POST", "/api/embed", {"model": "tiny"}),
    Check(
        "embed, fewer dimensions", "POST", "/api/embed", {"model": "tiny", "input": "hi", "dimensions": 8}, (), _EMBED
    ),
    Check(
        "embed, too long without truncation",
        "POST",
        "/api/embed",
        {"model": "tiny", "input": "a " * 5000, "truncate": False},
    ),
    Check("embeddings (legacy)", "POST", "/api/embeddings", {"model": "tiny", "prompt": "hi"}, (), _EMBED),
    Check("embeddings (legacy), empty prompt", "POST", "/api/embeddings", {"model": "tiny", "prompt": ""}),
    # -- /v1 --------------------------------------------------------------------------------------
    Check("v1 chat", "POST", "/v1/chat/completions", {"model": "tiny", "messages": HI}, (), _COUNTS),
    Check(
        "v1 chat, streamed with usage",
        "POST",
        "/v1/chat/completions",
        {"model": "tiny", "messages": HI, "stream": True, "stream_options": {"include_usage": True}},
        ("stream_headers", "delta_role"),
        ("token_counts", "chunking", "delta_role"),
    ),
    Check(
        "v1 chat, one tool call",
        "POST",
        "/v1/chat/completions",
        {"model": "tools", "messages": HI, "tools": [WEATHER_TOOL]},
        (),
        _COUNTS,
    ),
    Check(
        "v1 chat, two tool calls streamed",
        "POST",
        "/v1/chat/completions",
        {"model": "tools2", "messages": HI, "tools": [WEATHER_TOOL], "stream": True},
        ("stream_headers", "delta_role"),
        ("token_counts", "chunking", "delta_role"),
    ),
    Check(
        "v1 chat, ended by max_tokens, streamed",
        "POST",
        "/v1/chat/completions",
        {"model": "loop", "messages": HI, "max_tokens": 3, "stream": True},
        ("stream_headers", "delta_role"),
        ("token_counts", "chunking", "delta_role"),
    ),
    Check("v1 completions", "POST", "/v1/completions", {"model": "tiny", "prompt": "hi"}, (), _COUNTS),
    Check(
        "v1 completions, streamed",
        "POST",
        "/v1/completions",
        {"model": "tiny", "prompt": "hi", "stream": True},
        _STREAM,
        _COUNTS,
    ),
    Check(
        "v1 completions, streamed with usage",
        "POST",
        "/v1/completions",
        {"model": "tiny", "prompt": "hi", "stream": True, "stream_options": {"include_usage": True}},
        _STREAM,
        _COUNTS,
    ),
    Check("v1 embeddings", "POST", "/v1/embeddings", {"model": "tiny", "input": "hi"}, (), _EMBED),
    Check(
        "v1 embeddings, base64",
        "POST",
        "/v1/embeddings",
        {"model": "tiny", "input": ["a", "b"], "encoding_format": "base64"},
        (),
        _EMBED,
    ),
    Check("v1 models", "GET", "/v1/models", None, ("tags_order",), ("tags_order",)),
    Check("v1 model", "GET", "/v1/models/tiny"),
    # -- the model store ----------------------------------------------------------------------------
    Check("tags", "GET", "/api/tags", None, ("tags_order",), ("tags_order", "model_files")),
    Check("show", "POST", "/api/show", {"model": "tiny"}, (), ("model_files",)),
    Check("version", "GET", "/api/version", None, (), ("version",)),
    # -- errors ---------------------------------------------------------------------------------------
    Check("unknown model, generate", "POST", "/api/generate", {"model": "nope", "prompt": "hi"}),
    Check("unknown model, chat streamed", "POST", "/api/chat", {"model": "nope", "messages": HI}),
    Check("unknown model, embed", "POST", "/api/embed", {"model": "nope", "input": "hi"}),
    Check("unknown model, embeddings", "POST", "/api/embeddings", {"model": "nope", "prompt": "hi"}),
    Check("unknown model, show", "POST", "/api/show", {"model": "nope"}),
    Check(
        "unknown model, v1 chat", "POST", "/v1/chat/completions", {"model": "nope", "messages": HI}, ("refusal_media",)
    ),
    Check(
        "unknown model, v1 embeddings", "POST", "/v1/embeddings", {"model": "nope", "input": "hi"}, ("refusal_media",)
    ),
    Check("unknown model, v1 model", "GET", "/v1/models/nope"),
    Check("no model, chat", "POST", "/api/chat", {"messages": HI}),
    Check("no model, generate", "POST", "/api/generate", {"prompt": "hi"}, ("model_required",)),
    Check("truncated JSON", "POST", "/api/chat", b'{"model": "tiny", "mess', ("refusal_wording",)),
    Check("truncated JSON, v1", "POST", "/v1/chat/completions", b'{"model": "ti', ("refusal_wording",)),
    Check("empty body", "POST", "/api/chat", b""),
    Check(
        "a field of the wrong type",
        "POST",
        "/api/chat",
        {"model": "tiny", "messages": HI, "stream": "yes"},
        ("refusal_wording",),
    ),
    Check(
        "keep_alive of the wrong type",
        "POST",
        "/api/chat",
        {"model": "tiny", "messages": HI, "keep_alive": True},
        ("refusal_wording",),
    ),
    Check("embed, input of the wrong type", "POST", "/api/embed", {"model": "tiny", "input": [1, 2]}),
    Check("v1 chat, no messages", "POST", "/v1/chat/completions", {"model": "tiny", "messages": []}),
    Check("v1 embeddings, no input", "POST", "/v1/embeddings", {"model": "tiny"}, ("refusal_wording",)),
    Check(
        "generate, a suffix the model cannot insert",
        "POST",
        "/api/generate",
        {"model": "tiny", "prompt": "hi", "suffix": "end"},
    ),
    Check(
        "keep_alive without a unit",
        "POST",
        "/api/chat",
        {"model": "tiny", "messages": HI, "keep_alive": "3600"},
    ),
    Check(
        "think as a level on a model that cannot",
        "POST",
        "/api/generate",
        {"model": "tiny", "prompt": "hi", "think": "high"},
    ),
    Check(
        "a message field of the wrong type",
        "POST",
        "/api/chat",
        {"model": "tiny", "messages": [{"role": "user", "content": 1}]},
    ),
    Check(
        "an image that is not base64",
        "POST",
        "/api/generate",
        {"model": "tiny", "prompt": "hi", "images": ["notbase64"]},
    ),
    Check(
        "a message image that is not base64",
        "POST",
        "/api/chat",
        {"model": "tiny", "messages": [{"role": "user", "content": "hi", "images": ["ab$d"]}]},
    ),
    Check("images of the wrong type", "POST", "/api/generate", {"model": "tiny", "prompt": "hi", "images": [5]}),
    Check("a body that is not JSON", "POST", "/api/chat", b"nope", ("refusal_wording",)),
    Check(
        "a format that is neither json nor a schema",
        "POST",
        "/api/generate",
        {"model": "tiny", "prompt": "hi", "format": "yaml"},
    ),
    Check("no model, embed", "POST", "/api/embed", {"input": "hi"}, ("model_required",)),
    Check("no model, v1 embeddings", "POST", "/v1/embeddings", {"input": "hi"}, ("model_required", "refusal_media")),
    Check("no model, delete", "DELETE", "/api/delete", {}, admin=True),
    Check(
        "v1 chat, an unknown reasoning effort",
        "POST",
        "/v1/chat/completions",
        {"model": "tiny", "messages": HI, "reasoning_effort": "extreme"},
    ),
    Check(
        "v1 chat, a temperature of the wrong type",
        "POST",
        "/v1/chat/completions",
        {"model": "tiny", "messages": HI, "temperature": "hot"},
        ("refusal_wording",),
    ),
    Check(
        "v1 chat, tools of the wrong type",
        "POST",
        "/v1/chat/completions",
        {"model": "tiny", "messages": HI, "tools": "x"},
    ),
    Check(
        "v1 chat, a stop list with a number",
        "POST",
        "/v1/chat/completions",
        {"model": "tiny", "messages": HI, "stop": [1, "fox"]},
        (),
        _COUNTS,
    ),
    Check(
        "v1 completions, a stop list with a number",
        "POST",
        "/v1/completions",
        {"model": "tiny", "prompt": "hi", "stop": [1, "fox"]},
        ("refusal_wording",),
    ),
    Check(
        "v1 chat, messages of the wrong type",
        "POST",
        "/v1/chat/completions",
        {"model": "tiny", "messages": "hi"},
        ("refusal_wording",),
    ),
    Check("OPTIONS without an Origin", "OPTIONS", "/api/chat", None, ("route_errors",), ("preflight",)),
    Check("root", "GET", "/"),
    Check("version, HEAD", "HEAD", "/api/version"),
    Check("unknown route", "GET", "/api/nope", None, ("route_errors",)),
    Check("wrong method", "GET", "/api/chat", None, ("route_errors",)),
    Check("empty body, v1", "POST", "/v1/chat/completions", b"", ("refusal_wording",)),
    Check(
        "option of the wrong type",
        "POST",
        "/api/chat",
        {"model": "tiny", "messages": HI, "options": {"num_ctx": "big"}},
        ("option_type",),
    ),
    Check("think on a model that cannot", "POST", "/api/chat", {"model": "tiny", "messages": HI, "think": True}),
)


SHOWN: tuple[tuple[str, Side, tuple[str, ...], str], ...] = (
    (
        "test_the_emulators_pending_queue_refuses_as_ollamas_does",
        "emulator",
        (),
        "ten chats at once on a server with one slot and `OLLAMA_MAX_QUEUE=2` (the emulator: `max_queue=2`), "
        "each needing a reload, then all for the loaded model: statuses, media types and 503 bodies",
    ),
    (
        "test_a_runner_that_dies_mid_stream_ends_it_as_ollama_does",
        "gateway",
        ("v1_stream_error",),
        "long `/api/chat`, `/v1/chat/completions` and `/v1/completions` streams whose runner is killed "
        "after three lines (the emulator: a fault at the same place); status, media type and last frame",
    ),
    (
        "test_copy_and_delete_match_real_ollama",
        "gateway",
        (),
        "`POST /api/copy` and `DELETE /api/delete`, found and not, with the admin key on the gateway",
    ),
    (
        "test_loaded_models_match_real_ollama",
        "gateway",
        (),
        "`GET /api/ps` after the same loads on each side: keep_alive `5m`, `3600`, `-1`, `1h` then none "
        "(the last explicit one holds), `num_ctx` 8192 (the gateway may differ in `keep_alive`, the emulator in "
        "`model_files`)",
    ),
    (
        "test_gateway_loads_at_its_own_context_size_and_keep_alive",
        "gateway",
        ("num_ctx", "keep_alive"),
        "`GET /api/ps` after the same chat (keep_alive `5m`), directly and through a gateway with the default "
        "settings: 2048 and 30 minutes there",
    ),
    ("test_gateway_asks_for_credentials_where_ollama_asks_none", "gateway", ("auth",), "`GET /api/tags` without a key"),
    (
        "test_gateway_keeps_model_management_for_admins",
        "gateway",
        ("auth",),
        "`DELETE /api/delete` with a user's key (403), then an admin's (Ollama's answer)",
    ),
    (
        "test_gateway_answers_a_full_queue_with_503_and_retry_after",
        "gateway",
        ("backpressure",),
        "a chat while a stream holds the only slot, directly (served) and through a gateway with one slot and no queue",
    ),
    (
        "test_gateway_tells_a_refused_client_when_to_come_back",
        "gateway",
        ("backpressure",),
        "two chats through a gateway that allows one a minute",
    ),
)
"""Tests of their own: (test, side, the differences it shows happening, what it does)."""


# ----------------------------------------------------------------------------- the other side


@dataclass
class Other:
    side: Side
    url: str
    headers: dict[str, str]
    admin: dict[str, str]


def fixture_reply(model: str, prompt: str) -> list[str]:
    """The suite's models' answers, word by word as Ollama streams them (a loop model: many times)."""
    spec = FIXTURES[model.split(":")[0]]
    words = re.findall(r"\s*\S+", spec.answer)
    return words * 50 if spec.loop else words


def emulated_like(server: RealOllama) -> list[EmulatedModel]:
    """The real server's models as the emulator describes them: the same names, sizes, digests and templates."""
    _, tags = server.request("GET", "/api/tags")
    assert isinstance(tags, dict)
    models = []
    for entry in tags["models"]:
        _, show = server.request("POST", "/api/show", {"model": entry["name"]})
        assert isinstance(show, dict)
        details, info = entry["details"], show["model_info"]
        family = info["general.architecture"]
        parameters: dict[str, list[Any]] = {}
        for line in show.get("parameters", "").splitlines():
            key, _, value = line.partition(" ")
            parameters.setdefault(key, []).append(orjson.loads(value.strip()))
        models.append(
            EmulatedModel(
                name=entry["name"],
                size=entry["size"],
                digest=entry["digest"],
                context_length=info[f"{family}.context_length"],
                family=family,
                parameter_size=details["parameter_size"],
                quantization_level=details["quantization_level"],
                capabilities=tuple(show["capabilities"]),
                embedding_length=info[f"{family}.embedding_length"],
                template=show["template"],
                parameters=tuple((k, tuple(v) if k == "stop" else v[0]) for k, v in parameters.items()),
            )
        )
    return models


@pytest.fixture(scope="module")
def server(start_ollama: Callable[..., RealOllama]) -> Iterator[RealOllama]:
    """A real server of the module's own, with room for all four models: no evictions between checks."""
    real = start_ollama(OLLAMA_MAX_LOADED_MODELS="4")
    yield real
    real.stop()


def gateway_settings(server: RealOllama, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "upstreams": (server.url,),
        "api_keys": (f"ci={API_KEY}",),
        "admin_api_keys": (f"ops={ADMIN_KEY}",),
    }
    return Settings.from_mapping({**options, **overrides})


@pytest.fixture(scope="module", params=["gateway", "emulator"])
def other(request: pytest.FixtureRequest, server: RealOllama) -> Iterator[Other]:
    """The side held to real Ollama: the gateway in front of it, or the emulator with its models.

    The gateway's smallest context bucket is Ollama's default (4096), so the checks' short prompts
    are sent with the context the direct requests load at: one runner per model, no reload per check.
    What the default buckets change is shown by a test of its own.
    """
    if request.param == "gateway":
        settings = gateway_settings(server, num_ctx_buckets=(4096, 8192, 16384, 32768))
        with ServerThread(starlette_host(OllamaGateway(settings))) as host:
            yield Other("gateway", host.url + "/llm", dict(AUTH), dict(ADMIN))
        return
    with EmulatorServer(models=emulated_like(server), default_num_ctx=4096) as emulator:
        emulator.emulator.reply = fixture_reply
        yield Other("emulator", emulator.url, {}, {})


def send(base: str, method: str, path: str, body: object = None, headers: Mapping[str, str] | None = None) -> Answer:
    content = body if isinstance(body, bytes) else None if body is None else orjson.dumps(body)
    response = httpx.request(method, base + path, content=content, headers=headers, timeout=60)
    return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)


_direct: dict[str, Answer] = {}
_other: dict[tuple[str, Side], Answer] = {}


def answers(check: Check, server: RealOllama, other: Other) -> tuple[Answer, Answer]:
    """Real Ollama's answer and the other side's; each sent once, however many tests read them."""
    if check.name not in _direct:
        _direct[check.name] = send(server.url, check.method, check.path, check.body)
    key = (check.name, other.side)
    if key not in _other:
        headers = other.admin if check.admin else other.headers
        _other[key] = send(other.url, check.method, check.path, check.body, headers)
    return _direct[check.name], _other[key]


def checks() -> list[Any]:
    return [pytest.param(check, id=check.name.replace(" ", "-")) for check in CHECKS]


def allowed(check: Check, side: Side) -> tuple[str, ...]:
    return check.gateway if side == "gateway" else check.emulator


def expect_known_defect(request: pytest.FixtureRequest, check: Check, key: str) -> None:
    if key in check.known:
        request.applymarker(pytest.mark.xfail(strict=True, reason=check.known[key]))


# ----------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("check", checks())
def test_answers_match_real_ollama(
    check: Check, server: RealOllama, other: Other, request: pytest.FixtureRequest
) -> None:
    expect_known_defect(request, check, other.side)
    direct, theirs = answers(check, server, other)
    mine, yours = compare(direct, theirs, other.side, allowed(check, other.side))
    assert yours == mine


@pytest.mark.parametrize("check", checks())
def test_fields_come_in_ollama_order(
    check: Check, server: RealOllama, other: Other, request: pytest.FixtureRequest
) -> None:
    expect_known_defect(request, check, f"{other.side} order")
    direct, theirs = answers(check, server, other)
    mine, yours = compare(direct, theirs, other.side, allowed(check, other.side))
    assert field_order(yours["frames"]) == field_order(mine["frames"])


@pytest.mark.parametrize("check", checks())
def test_framing_follows_ollama(check: Check, server: RealOllama, other: Other) -> None:
    direct, theirs = answers(check, server, other)
    assert (framing_faults(direct), framing_faults(theirs)) == ([], [])


LOADS = {
    "5m": [{"keep_alive": "5m"}],
    "3600": [{"keep_alive": 3600}],
    "forever": [{"keep_alive": -1}],
    "the-last-explicit-keep_alive": [{"keep_alive": "1h"}, {}],
    "num_ctx-8192": [{"keep_alive": "5m", "options": {"num_ctx": 8192}}],
}


@pytest.mark.parametrize("loads", list(LOADS.values()), ids=list(LOADS))
def test_loaded_models_match_real_ollama(server: RealOllama, other: Other, loads: list[dict[str, Any]]) -> None:
    """/api/ps after the same loads on each side; the gateway's own keep_alive shows in ``expires_at``."""
    bodies = [{"model": "tiny", "messages": [], **extra} for extra in loads]
    for body in bodies:
        send(server.url, "POST", "/api/chat", body)
    direct = send(server.url, "GET", "/api/ps")
    for body in bodies:  # the gateway's loads go to the same server, after the direct ones were seen
        send(other.url, "POST", "/api/chat", body, other.headers)
    theirs = send(other.url, "GET", "/api/ps", None, other.headers)
    keys = ("keep_alive",) if other.side == "gateway" else ("model_files",)
    mine, yours = compare(direct, theirs, other.side, keys, model="tiny:latest")
    assert yours == mine


def test_copy_and_delete_match_real_ollama(server: RealOllama, other: Other) -> None:
    """A copy, a copy of nothing, a delete and a delete of what is gone: four answers, each Ollama's."""
    steps = [
        ("POST", "/api/copy", {"source": "tiny", "destination": "conformance-copy"}),
        ("POST", "/api/copy", {"source": "nope", "destination": "conformance-none"}),
        ("DELETE", "/api/delete", {"model": "conformance-copy"}),
        ("DELETE", "/api/delete", {"model": "conformance-copy"}),
    ]
    direct = [send(server.url, method, path, body) for method, path, body in steps]
    theirs = [send(other.url, method, path, body, other.admin) for method, path, body in steps]
    forms = [compare(mine, yours, other.side) for mine, yours in zip(direct, theirs, strict=True)]
    assert [yours for _, yours in forms] == [mine for mine, _ in forms]


LONG_STREAMS = {
    "/api/chat": {"model": "loop", "messages": HI, "options": {"num_predict": 5000}},
    "/v1/chat/completions": {"model": "loop", "messages": HI, "max_tokens": 5000, "stream": True},
    "/v1/completions": {"model": "loop", "prompt": "hi", "max_tokens": 5000, "stream": True},
}


def stream_until_the_runner_dies(
    server: RealOllama, url: str, path: str, headers: Mapping[str, str], kill: bool
) -> Answer:
    """A long stream; after three lines or events the server's runners are killed (``kill``), then the rest is read."""
    with httpx.stream("POST", url + path, json=LONG_STREAMS[path], headers=headers, timeout=60) as response:
        sse = path.startswith("/v1")
        lines = (line for line in response.iter_lines() if line) if sse else response.iter_lines()
        head = [next(lines) for _ in range(3)]
        if kill:
            for pid in server.runner_pids():
                os.kill(pid, signal.SIGKILL)
        raw = "".join(line + ("\n\n" if sse else "\n") for line in [*head, *lines]).encode()
        return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, raw)


def ending(form: dict[str, Any]) -> dict[str, Any]:
    """Status, media type and the last frame: how many lines came before a kill is a race."""
    return {**form, "frames": form["frames"][-1:]}


@pytest.mark.parametrize("path", list(LONG_STREAMS))
@pytest.mark.parametrize("side", ["gateway", "emulator"])
def test_a_runner_that_dies_mid_stream_ends_it_as_ollama_does(
    server: RealOllama, gateway_for: Callable[..., ServerThread], side: Side, path: str
) -> None:
    """Status 200 already sent, the stream ends with Ollama's error line (native), or with an empty
    chunk of no model and no ``[DONE]`` (/v1), and no final chunk."""
    direct = stream_until_the_runner_dies(server, server.url, path, {}, kill=True)
    if side == "gateway":
        host = gateway_for(server, num_ctx_buckets=(4096, 8192))
        theirs = stream_until_the_runner_dies(server, host.url + "/llm", path, AUTH, kill=True)
    else:
        with EmulatorServer(models=emulated_like(server), default_num_ctx=4096) as emulator:
            emulator.emulator.reply = fixture_reply
            fault = Fault(path=path, kind="midstream_error", after_lines=3, message=RUNNER_DIED)
            emulator.emulator.inject(fault)
            theirs = stream_until_the_runner_dies(server, emulator.url, path, {}, kill=False)
    assert (framing_faults(direct), framing_faults(theirs)) == ([], [])
    keys = ("stream_headers", "v1_stream_error") if side == "gateway" else ()
    mine, yours = compare(direct, theirs, side, keys)
    assert ending(yours) == ending(mine)


@pytest.fixture(scope="module")
def one_slot_server(start_ollama: Callable[..., RealOllama]) -> Iterator[RealOllama]:
    """A real server with one slot per model and room for two pending requests."""
    real = start_ollama(("tiny",), OLLAMA_NUM_PARALLEL="1", OLLAMA_MAX_QUEUE="2")
    yield real
    real.stop()


def storm(url: str, reloads: bool) -> list[tuple[int, str, bytes]]:
    """Ten chats at once, each at a context of its own (each needs a reload) or all at the loaded one."""
    send(url, "POST", "/api/chat", {"model": "tiny", "messages": []})  # loaded at the default context
    bodies = [
        {"model": "tiny", "messages": HI, "stream": False, "options": {"num_predict": 2}}
        | ({"options": {"num_predict": 2, "num_ctx": 2048 + 256 * i}} if reloads else {})
        for i in range(10)
    ]
    start = threading.Barrier(len(bodies))

    def at_once(body: dict[str, Any]) -> Answer:
        start.wait()  # all ten leave together, well within the first reload
        return send(url, "POST", "/api/chat", body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(at_once, bodies))
    return sorted((a.status, a.media, b"" if a.status == 200 else a.raw) for a in answers)


@pytest.mark.parametrize("reloads", [True, False], ids=["each-needs-a-reload", "for-the-loaded-model"])
def test_the_emulators_pending_queue_refuses_as_ollamas_does(one_slot_server: RealOllama, reloads: bool) -> None:
    """OLLAMA_MAX_QUEUE bounds only requests that need the scheduler: with one slot and a queue of
    two, of ten that each need a reload three are answered (one loading, two pending) and the rest
    get the same 503; ten for the loaded model are all answered. A request that a busy machine
    delays past the first reload finds the queue free again, so the counts are bounds."""
    direct = storm(one_slot_server.url, reloads)
    # A slow load on the emulator's side too: its requests are parsed in this process, next to the test's threads.
    emulator = EmulatorServer(models=emulated_like(one_slot_server), max_queue=2, load_base_seconds=1.5)
    with emulator:
        emulator.emulator.reply = fixture_reply
        theirs = storm(emulator.url, reloads)
    assert set(theirs) == set(direct)  # the same statuses, media types and 503 bodies
    for answers in (direct, theirs):
        refused = [status for status, *_ in answers].count(503)
        assert 5 <= refused <= 7 if reloads else refused == 0


# ----------------------------------------------------------------------------- what only the gateway does


def test_gateway_loads_at_its_own_context_size_and_keep_alive(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    """With the default settings a short prompt loads at 2048 for 30 minutes, where Ollama loads at its
    default 4096 for the 5 minutes the client asked."""
    gateway = gateway_for(server)
    body = {"model": "tiny", "messages": HI, "stream": False, "keep_alive": "5m"}
    send(server.url, "POST", "/api/chat", body)
    direct = send(server.url, "GET", "/api/ps")
    send(gateway.url + "/llm", "POST", "/api/chat", body, AUTH)
    theirs = send(gateway.url + "/llm", "GET", "/api/ps", None, AUTH)
    mine, yours = compare(direct, theirs, "gateway", model="tiny:latest")
    seen = [[(m["context_length"], m["expires_at"]) for m in form["frames"][0]["models"]] for form in (mine, yours)]
    assert seen == [[(4096, "<now+5m>")], [(2048, "<now+30m>")]]
    mine, yours = compare(direct, theirs, "gateway", ("keep_alive", "num_ctx"), model="tiny:latest")
    assert yours == mine


def test_gateway_asks_for_credentials_where_ollama_asks_none(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    gateway = gateway_for(server)
    assert send(server.url, "GET", "/api/tags").status == 200
    assert send(gateway.url + "/llm", "GET", "/api/tags").status == 401


def test_gateway_keeps_model_management_for_admins(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    gateway = gateway_for(server)
    body = {"model": "nope"}
    direct = send(server.url, "DELETE", "/api/delete", body)
    assert send(gateway.url + "/llm", "DELETE", "/api/delete", body, AUTH).status == 403
    mine, yours = compare(direct, send(gateway.url + "/llm", "DELETE", "/api/delete", body, ADMIN), "gateway")
    assert yours == mine


def test_gateway_tells_a_refused_client_when_to_come_back(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    gateway = gateway_for(server, rate_limit_rpm=1)
    body = {"model": "tiny", "messages": HI, "stream": False}
    assert [send(server.url, "POST", "/api/chat", body).status for _ in range(2)] == [200, 200]
    refused = [send(gateway.url + "/llm", "POST", "/api/chat", body, AUTH) for _ in range(2)]
    assert [a.status for a in refused] == [200, 429]
    assert int(refused[1].headers["retry-after"]) >= 1


def test_gateway_answers_a_full_queue_with_503_and_retry_after(
    server: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    """A second chat while a stream holds the only slot: Ollama queues it without bound; a gateway
    with one slot and no queue refuses it at once and says when to come back."""
    short = {"model": "loop", "messages": HI, "options": {"num_predict": 2}, "stream": False}

    def second_while_streaming(url: str, headers: Mapping[str, str]) -> Answer:
        with httpx.stream("POST", url + "/api/chat", json=LONG_STREAMS["/api/chat"], headers=headers) as first:
            lines = first.iter_lines()  # kept: a dropped iterator would close the stream
            next(lines)
            with ThreadPoolExecutor(1) as pool:
                second = pool.submit(send, url, "POST", "/api/chat", short, headers)
                with contextlib.suppress(TimeoutError):
                    second.result(timeout=1.5)  # a refusal comes at once; a queued request waits
                first.close()  # the first client leaves, which frees the slot
                return second.result()

    assert second_while_streaming(server.url, {}).status == 200
    gateway = gateway_for(server, parallel=1, max_queue=0, num_ctx_buckets=(4096, 8192))
    refused = second_while_streaming(gateway.url + "/llm", AUTH)
    assert refused.status == 503
    assert int(refused.headers["retry-after"]) >= 1


# ----------------------------------------------------------------------------- the document


@pytest.mark.usefixtures("ollama_binary")  # with the suite: the summary's count of real tests stays honest
def test_the_document_says_what_is_checked() -> None:
    rendered = render([c.planned() for c in CHECKS], SHOWN, EMULATED_VERSION, ORACLE)
    current = DOC.read_text() if DOC.exists() else ""
    if current != rendered:
        DOC.write_text(rendered)
    assert current == rendered, f"{DOC} was stale and has been rewritten: commit it"


@pytest.mark.usefixtures("ollama_binary")
def test_every_difference_is_allowed_by_a_check_or_shown_by_a_test() -> None:
    sides: tuple[Side, ...] = ("gateway", "emulator")
    named = {(side, key) for c in CHECKS for side in sides for key in allowed(c, side)}
    assert [test for test, *_ in SHOWN if not callable(globals().get(test))] == []
    named |= {(side, key) for _, side, keys, _ in SHOWN for key in keys}
    assert {(d.side, d.key) for d in DIFFERENCES} <= named
