"""Bad input: whatever a client sends, the answer is a well-formed 2xx/4xx, never a 500 and never a hang.

Generated inputs (hypothesis) cover every route of the route table with bodies that are half valid
and half hostile; the explicit cases below them pin what each classic attack must get: oversized
and endless bodies, JSON nested past any parser's depth, invalid UTF-8 everywhere, wrong content
types, ``num_ctx`` out of range, ``keep_alive`` values that would pin a model in memory forever (an
ordinary user's is replaced by the gateway's own), and model names that try to walk a path.
"""

from __future__ import annotations

import itertools
import json
import string
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_asgi.routing import ROUTES
from ollama_asgi.testing import EmulatorServer
from tests.conftest import ADMIN, AUTH
from tests.security.wire import request, send_raw
from tests.support.server import ServerThread

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
MODELS = ["llama3.2", "qwen2.5:0.5b", "all-minilm", "nope"]
HOSTILE_NAMES = [
    "../../etc/passwd",
    "..\\..\\windows\\system32",
    "llama3.2/../../secrets",
    "/etc/passwd",
    "llama3.2/",
    "a//b",
    "./llama3.2",
    "%2e%2e%2fetc",
    "llama3.2%2F..",
    "llama3.2\x00.bin",
    "llama3.2\r\nX-Admin: 1",
    "llama3.2 ; rm -rf /",
    "registry.example:99999/x/y/z/w",
    "a:b:c",
    "A" * 400,
    "",
    " ",
    "\u202ellama3.2",
    "llama3.2:../../x",
]


@pytest.fixture
def fuzz_host(host_factory: Callable[..., ServerThread]) -> ServerThread:
    return host_factory(max_body_bytes=256 * 1024, read_timeout=5.0)


@pytest.fixture
def client(fuzz_host: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_host.url + "/llm", timeout=15) as client:
        yield client


def well_formed(response: httpx.Response, what: object = "") -> None:
    """No 5xx; errors are JSON with an ``error``; streams are whole JSON lines or SSE events."""
    assert response.status_code < 500, (what, response.status_code, response.text[:300])
    ctype = response.headers.get("content-type", "")
    body = response.content
    if not body:
        return
    if response.status_code >= 400:
        assert "error" in orjson.loads(body), body[:200]
    elif ctype.startswith("application/x-ndjson"):
        assert body.endswith(b"\n")
        for line in body.splitlines():
            assert isinstance(orjson.loads(line), dict)
    elif ctype.startswith("text/event-stream"):
        for event in body.split(b"\n\n"):
            if event.startswith(b"data: ") and event != b"data: [DONE]":
                orjson.loads(event[6:])
    elif ctype.startswith("application/json"):
        orjson.loads(body)


# -- generated -------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=16),
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
small_ints = st.integers(min_value=-3, max_value=6)
keep_alives = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False),
    st.sampled_from(["-1", "-1s", "-1m", "0", "0s", "5m", "24h", "87600h", "9999999h", "1e9s", "forever", "1h30m", ""]),
    st.text(max_size=8),
    anything,
)
valid_options = st.fixed_dictionaries(
    {"num_predict": st.integers(min_value=-2, max_value=6)},
    optional={
        "num_ctx": st.integers(min_value=1, max_value=262144),
        "temperature": st.floats(min_value=0, max_value=2),
        "seed": st.integers(min_value=-(2**31), max_value=2**31),
        "top_k": st.integers(min_value=0, max_value=100),
        "stop": st.lists(st.text(max_size=4), max_size=2),
    },
)
valid_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(MODELS),
        "options": valid_options,
        "max_tokens": st.integers(min_value=1, max_value=6),
    },
    optional={
        "prompt": st.text(max_size=30),
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "assistant"]), "content": st.text(max_size=30)}
            ),
            min_size=1,
            max_size=3,
        ),
        "input": st.text(max_size=20) | st.lists(st.text(max_size=10), max_size=3),
        "stream": st.booleans(),
        "keep_alive": st.sampled_from([-1, 0, 300, "5m", "24h", "-1s"]),
        "format": st.sampled_from(["json", ""]),
        "think": st.booleans(),
        "raw": st.booleans(),
    },
)
# One or two fields of an otherwise valid body replaced by something hostile (or removed), so most
# examples get past validation to Ollama and back while every field is attacked in turn.
hostile_values: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(HOSTILE_NAMES) | st.text(max_size=24) | anything,
    "name": st.sampled_from(HOSTILE_NAMES) | anything,
    "prompt": anything,
    "messages": anything | st.lists(st.dictionaries(st.text(max_size=8), anything, max_size=3), max_size=3),
    "input": anything,
    "stream": anything,
    "options": anything
    | st.fixed_dictionaries(
        {},
        optional={
            "num_ctx": st.one_of(st.integers(min_value=-(2**64), max_value=2**64), st.floats(), scalars),
            "num_predict": st.one_of(small_ints, st.floats(min_value=-3, max_value=6), st.text(max_size=4)),
            "temperature": scalars,
            "seed": scalars,
            "top_k": scalars,
            "stop": anything,
            "num_gpu": scalars,
            "num_thread": scalars,
        },
    ),
    "keep_alive": keep_alives,
    "format": anything,
    "think": anything,
    "max_tokens": anything,
    "stream_options": anything,
    "tools": anything,
    "images": anything,
    "template": anything,
    "suffix": anything,
}
mutations = st.lists(
    st.sampled_from(sorted(hostile_values)).flatmap(
        lambda key: st.tuples(st.just(key), st.one_of(st.just(None), hostile_values[key]))
    ),
    max_size=2,
)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = draw(valid_bodies)
    for key, value in draw(mutations):
        body[key] = value
    return body


def _dumps(value: object) -> bytes:
    return json.dumps(value).encode()


JSON_ROUTES = sorted(path for path, route in ROUTES.items() if route.json_body)
PATH_CHARS = string.ascii_letters + string.digits + "/.%-_~:;@!$&'()*+,= \\"


@FUZZ
@given(path=st.sampled_from(JSON_ROUTES), body=bodies(), admin=st.booleans())
def test_generated_bodies_on_every_json_route_get_a_well_formed_answer(
    client: httpx.Client, emulator: EmulatorServer, path: str, body: dict[str, Any], admin: bool
) -> None:
    route = ROUTES[path]
    if admin and route.kind.value == "manage":
        admin = False  # admins really manage: keep the store intact for the other examples
    method = sorted(route.methods)[0]
    raw = json.dumps(body).encode()  # the json module writes what orjson would refuse (ints past 64 bits)
    response = client.request(method, path, content=raw, headers=ADMIN if admin else AUTH)
    well_formed(response, (method, path, body))


@FUZZ
@given(
    raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode), anything.map(_dumps)),
    path=st.sampled_from(sorted(ROUTES)),
    ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", "", "multipart/x"]),
)
def test_generated_raw_bodies_and_content_types_get_a_well_formed_answer(
    client: httpx.Client, raw: bytes, path: str, ctype: str
) -> None:
    method = "POST" if "POST" in ROUTES[path].methods else sorted(ROUTES[path].methods)[0]
    headers = {**AUTH, "Content-Type": ctype} if ctype else AUTH
    well_formed(client.request(method, path, content=raw, headers=headers), (method, path, raw))


@FUZZ
@given(
    path=st.text(alphabet=PATH_CHARS, max_size=40),
    method=st.sampled_from(["GET", "POST", "HEAD", "DELETE", "PUT", "OPTIONS", "PATCH"]),
    query=st.text(alphabet=PATH_CHARS + "?#", max_size=20),
)
def test_generated_paths_and_methods_get_a_well_formed_answer(
    fuzz_host: ServerThread, path: str, method: str, query: str
) -> None:
    target = "/llm/" + path.replace(" ", "%20").replace("\\", "%5C") + ("?" + query.replace(" ", "+") if query else "")
    reply = request(fuzz_host.port, method, target, list(AUTH.items()), b"{}" if method != "GET" else b"")
    assert reply.status != 0 and reply.status < 500, (method, target, reply.status, reply.body[:200])


@FUZZ
@given(
    timeout=st.text(max_size=12) | st.integers().map(str) | st.floats().map(str),
    priority=st.text(max_size=12) | st.sampled_from(["batch", "interactive", "BATCH", "admin", "0"]),
    request_id=st.text(max_size=200),
)
def test_generated_control_headers_get_a_well_formed_answer(
    fuzz_host: ServerThread, timeout: str, priority: str, request_id: str
) -> None:
    body = b'{"model":"llama3.2","prompt":"hi","stream":false,"options":{"num_predict":2}}'
    headers = [*AUTH.items(), ("X-Request-Timeout", timeout), ("X-Request-Priority", priority)]
    headers.append(("X-Request-Id", request_id))
    try:
        head = "\r\n".join(f"{k}: {v}" for k, v in headers).encode("utf-8")
    except UnicodeEncodeError:  # surrogates cannot go on the wire at all
        return
    reply = send_raw(
        fuzz_host.port,
        b"POST /llm/api/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + head
        + f"\r\nContent-Length: {len(body)}".encode(),
        body,
    )
    # The server may refuse a malformed header line outright (400 or a closed connection).
    assert reply.status in {0, 200, 400}, (headers, reply.status, reply.body[:200])
    echoed = reply.header("x-request-id")
    assert echoed is None or (0 < len(echoed) <= 128 and echoed.isascii() and echoed.isprintable())


# -- explicit --------------------------------------------------------------------------------------


def test_a_declared_oversized_body_is_refused_before_it_is_sent(fuzz_host: ServerThread) -> None:
    started = time.monotonic()
    head = f"POST /llm/api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
    head += "Content-Type: application/json\r\nContent-Length: 10000000000\r\nConnection: close"
    reply = send_raw(fuzz_host.port, head.encode(), b'{"model":"llama3.2","messages":[')
    assert reply.status == 413 and "larger than" in str(reply.json())
    assert time.monotonic() - started < 5


def test_an_endless_chunked_body_is_cut_at_the_limit(client: httpx.Client) -> None:
    def endless() -> Iterator[bytes]:
        yield b'{"model":"llama3.2","prompt":"'
        for _ in range(10_000):  # 640 MB if nobody stops it
            yield b"x" * 65536

    response = client.post("/api/generate", content=endless(), headers=AUTH)
    assert response.status_code == 413


def test_a_body_just_under_the_limit_is_served(client: httpx.Client) -> None:
    prompt = "word " * ((256 * 1024 - 200) // 5)
    body = {"model": "llama3.2", "prompt": prompt, "stream": False, "options": {"num_predict": 2}}
    response = client.post("/api/generate", json=body, headers=AUTH)
    assert response.status_code == 200 and response.json()["done"] is True


DEEP = [
    b"[" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"model":"llama3.2","messages":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"model":"llama3.2","options":' + b'{"x":' * 3000 + b"1" + b"}" * 3001,
]


def test_json_nested_past_any_parser_depth_is_a_400(client: httpx.Client) -> None:
    for raw in DEEP:
        for path in ("/api/chat", "/api/generate", "/v1/chat/completions", "/api/show", "/api/embed"):
            response = client.post(path, content=raw, headers=AUTH)
            assert response.status_code in (400, 413), (path, response.status_code, response.text[:200])
            well_formed(response)


def test_nesting_a_parser_accepts_is_relayed_not_crashed_on(client: httpx.Client) -> None:
    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    body = {"model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "hi", "extra": deep}]}
    well_formed(client.post("/api/chat", json=body, headers=AUTH))


BAD_UTF8 = [
    b'{"model":"llama3.2","prompt":"\xff\xfe"}',
    b'{"model":"llama3.2","prompt":"\xed\xa0\x80"}',  # an encoded surrogate
    b'{"model":"llama\xc3\x28","prompt":"x"}',
    b'{"model":"llama3.2","prompt":"ok"}\xff',
    b"\xef\xbb\xbf" + b'{"model":"llama3.2","prompt":"x"}',  # a byte-order mark
    b'{"model":"llama3.2","messages":[{"role":"user","content":"\x00\x01\x1f"}]}',
]


def test_invalid_utf8_and_control_bytes_in_bodies_are_refused_cleanly(client: httpx.Client) -> None:
    for raw in BAD_UTF8:
        for path in ("/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions"):
            response = client.post(path, content=raw, headers=AUTH)
            assert response.status_code == 400, (path, raw, response.status_code, response.text[:200])
            well_formed(response)


def test_invalid_utf8_in_paths_and_headers_is_refused_cleanly(fuzz_host: ServerThread) -> None:
    for target in ("/llm/api/%ff", "/llm/v1/models/%ff%fe", "/llm/api/blobs/sha256:%c3%28", "/llm/%ed%a0%80"):
        reply = request(fuzz_host.port, "GET", target, list(AUTH.items()))
        assert reply.status in (400, 404, 405), (target, reply.status)
    body = b'{"model":"llama3.2","prompt":"x","stream":false}'
    for name in (b"X-Request-Timeout", b"X-Request-Priority", b"X-Request-Id", b"Content-Type"):
        head = b"POST /llm/api/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        head += f"Authorization: {AUTH['Authorization']}\r\nContent-Length: {len(body)}\r\n".encode()
        reply = send_raw(fuzz_host.port, head + name + b": \xff\xfe\xc3\x28", body)
        assert reply.status in (0, 200, 400), (name, reply.status, reply.body[:200])


def test_an_openai_completion_without_a_prompt_is_answered_as_ollama_answers_it(client: httpx.Client) -> None:
    # To Ollama an empty prompt is a load: one JSON object without a newline, even when streaming.
    for prompt in ({}, {"prompt": ""}):
        for stream in (True, False):
            body = {"model": "llama3.2", "stream": stream, **prompt}
            response = client.post("/v1/completions", json=body, headers=AUTH)
            assert response.status_code == 200, response.text
            well_formed(response)
            assert response.text.rstrip().endswith("data: [DONE]") if stream else response.json()["choices"]


def test_wrong_content_types_are_read_as_ollama_reads_them(client: httpx.Client) -> None:
    body = b'{"model":"llama3.2","prompt":"hi","stream":false,"options":{"num_predict":2}}'
    for ctype in ("text/plain", "application/xml", "multipart/form-data; boundary=x", "", "*/*"):
        headers = {**AUTH, "Content-Type": ctype}
        assert client.post("/api/generate", content=body, headers=headers).status_code == 200  # as Ollama does
    form = client.post("/api/generate", data={"model": "llama3.2", "prompt": "hi"}, headers=AUTH)
    assert form.status_code == 400 and "invalid JSON" in form.json()["error"]


def test_num_ctx_out_of_range_or_of_the_wrong_type_is_a_400(client: httpx.Client) -> None:
    for num_ctx in (-1, 0, -(2**63), 2**31, 2**63, 10**30, 1e308, 4096.5, "4096", True, [4096], {"n": 1}):
        raw = b'{"model":"llama3.2","prompt":"x","options":{"num_ctx":' + json.dumps(num_ctx).encode() + b"}}"
        for path in ("/api/generate", "/api/chat", "/api/embed"):
            response = client.post(path, content=raw, headers=AUTH)
            assert response.status_code == 400, (path, num_ctx, response.status_code, response.text[:200])
            assert "num_ctx" in response.json()["error"] or "JSON" in response.json()["error"]


def test_num_ctx_at_the_edges_of_the_range_is_served(client: httpx.Client) -> None:
    for num_ctx in (1, 2, 255, 262144):
        options = {"num_ctx": num_ctx, "num_predict": 2}
        body = {"model": "llama3.2", "prompt": "x", "stream": False, "options": options}
        response = client.post("/api/generate", json=body, headers=AUTH)
        assert response.status_code == 200, (num_ctx, response.text)


PINNING = [-1, -1.5, "-1s", "-5m", "-1h0m", 1e12, 2**62, "87600h", "9999999h", "24h", 3600]


def test_an_ordinary_users_keep_alive_is_replaced_by_the_gateways(
    client: httpx.Client, emulator: EmulatorServer
) -> None:
    for keep_alive in PINNING:
        prompt = f"pin {keep_alive}"
        native = {"model": "llama3.2", "prompt": prompt, "stream": False, "keep_alive": keep_alive}
        openai = {"model": "llama3.2", "messages": [{"role": "user", "content": prompt}], "keep_alive": keep_alive}
        assert client.post("/api/generate", json=native, headers=AUTH).status_code == 200
        assert client.post("/v1/chat/completions", json=openai, headers=AUTH).status_code == 200
        sent = [r.json for r in emulator.emulator.requests if r.json and prompt in json.dumps(r.json)]
        assert len(sent) == 2 and all(body["keep_alive"] == "30m" for body in sent), sent
        assert emulator.emulator.loaded_models()["llama3.2:latest"].keep_alive == 30 * 60  # not pinned


def test_a_keep_alive_ollama_cannot_read_is_a_400_not_a_pin(client: httpx.Client) -> None:
    for keep_alive in ("-1", "forever", "1e9s", True, [1], {"s": 1}):
        body = {"model": "llama3.2", "prompt": "x", "stream": False, "keep_alive": keep_alive}
        response = client.post("/api/generate", json=body, headers=AUTH)
        assert response.status_code == 400 and "keep_alive" in response.text or "duration" in response.text


def test_an_ordinary_user_cannot_unload_and_an_admins_keep_alive_is_honoured(
    client: httpx.Client, emulator: EmulatorServer
) -> None:
    unload = {"model": "llama3.2", "keep_alive": 0}
    assert client.post("/api/generate", json=unload, headers=AUTH).status_code == 403
    pin = {"model": "llama3.2", "prompt": "admin pin", "stream": False, "keep_alive": -1}
    assert client.post("/api/generate", json=pin, headers=ADMIN).status_code == 200
    sent = [r.json for r in emulator.emulator.requests if r.json and r.json.get("prompt") == "admin pin"]
    assert sent[-1]["keep_alive"] == -1
    assert emulator.emulator.loaded_models()["llama3.2:latest"].keep_alive == float("inf")


def test_model_names_with_path_characters_are_refused_everywhere(
    client: httpx.Client, emulator: EmulatorServer
) -> None:
    requests_before = len(emulator.emulator.requests)
    for (path, key, headers), name in itertools.product(NAMED_ROUTES, HOSTILE_NAMES):
        method = "DELETE" if path == "/api/delete" else "POST"
        response = client.request(method, path, json={key: name, "prompt": "x", "input": "x"}, headers=headers)
        assert response.status_code == 400, (path, key, name, response.status_code, response.text[:200])
        well_formed(response)
    assert len(emulator.emulator.requests) == requests_before  # nothing reached Ollama


NAMED_ROUTES = [
    ("/api/generate", "model", AUTH),
    ("/api/chat", "model", AUTH),
    ("/api/embed", "model", AUTH),
    ("/api/show", "model", AUTH),
    ("/api/show", "name", AUTH),
    ("/v1/chat/completions", "model", AUTH),
    ("/v1/embeddings", "model", AUTH),
    ("/api/delete", "model", ADMIN),
    ("/api/pull", "model", ADMIN),
]


PATH_NAMES = [
    "/llm/v1/models/..%2F..%2Fapi%2Fdelete",
    "/llm/v1/models/%2e%2e/%2e%2e/api/tags",
    "/llm/v1/models/llama3.2%00",
    "/llm/v1/models/a%0D%0ASet-Cookie:%20x=1",
    "/llm/v1/models/" + "a" * 5000,
    "/llm/api/blobs/..%2F..%2Fetc%2Fpasswd",
    "/llm/api/blobs/sha256:%2e%2e",
]


def test_model_names_in_paths_never_escape_their_route(fuzz_host: ServerThread) -> None:
    for target, headers in itertools.product(PATH_NAMES, (list(AUTH.items()), list(ADMIN.items()))):
        reply = request(fuzz_host.port, "GET", target, headers)
        assert reply.status in (400, 404, 405), (target, reply.status, reply.body[:200])
        assert all(name != "set-cookie" for name, _ in reply.headers)


# -- Ollama reads keys as Go's encoding/json does: case-insensitively, the last one winning ------------


def upstream_bodies(emulator: EmulatorServer, marker: str) -> list[bytes]:
    return [r.body for r in emulator.emulator.requests if marker.encode() in r.body]


def test_a_second_spelling_of_model_cannot_pass_the_allow_list(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    host = host_factory(allowed_models=("llama3.2",))
    raw = b'{"model":"llama3.2","Model":"qwen2.5:0.5b","prompt":"spelled twice","stream":false}'
    for path in ("/api/generate", "/api/show"):
        reply = httpx.post(host.url + "/llm" + path, content=raw, headers=AUTH, timeout=15)
        assert reply.status_code == 403 and "qwen2.5:0.5b" in reply.json()["error"], (path, reply.text)
    assert not [r for r in emulator.emulator.requests if b"qwen" in r.body]


def test_a_second_spelling_of_keep_alive_cannot_pin_a_model(client: httpx.Client, emulator: EmulatorServer) -> None:
    raw = b'{"model":"llama3.2","prompt":"pin by case","stream":false,"keep_alive":"5m","KEEP_ALIVE":-1}'
    assert client.post("/api/generate", content=raw, headers=AUTH).status_code == 200
    (sent,) = upstream_bodies(emulator, "pin by case")
    assert orjson.loads(sent)["keep_alive"] == "30m" and b"KEEP_ALIVE" not in sent
    assert emulator.emulator.loaded_models()["llama3.2:latest"].keep_alive == 30 * 60


def test_a_second_spelling_of_options_cannot_pass_the_num_ctx_cap(client: httpx.Client) -> None:
    raw = b'{"model":"llama3.2","prompt":"x","stream":false,"options":{"num_predict":2},"OPTIONS":{"num_ctx":999999}}'
    response = client.post("/api/generate", content=raw, headers=AUTH)
    assert response.status_code == 400 and "num_ctx" in response.json()["error"]


def test_upstream_receives_options_under_one_spelling_only(client: httpx.Client, emulator: EmulatorServer) -> None:
    raw = b'{"model":"llama3.2","prompt":"options by case","stream":false,"Options":{"num_predict":2,"seed":7}}'
    assert client.post("/api/generate", content=raw, headers=AUTH).status_code == 200
    (sent,) = upstream_bodies(emulator, "options by case")
    assert b'"Options"' not in sent and orjson.loads(sent)["options"]["seed"] == 7


def test_json_nested_deeper_than_the_gateway_writes_is_a_400_naming_the_limit(client: httpx.Client) -> None:
    for depth in (254, 600, 1023):
        raw = b'{"model":"llama3.2","prompt":"x","context":' + b"[" * depth + b"]" * depth + b"}"
        for path in ("/api/generate", "/api/show"):
            response = client.post(path, content=raw, headers=AUTH)
            assert response.status_code == 400, (depth, path, response.status_code, response.text[:200])
            assert "deeper than 254 levels" in response.json()["error"]


def test_tool_arguments_nested_too_deep_to_forward_are_a_400(client: httpx.Client) -> None:
    arguments = "[" * 300 + "]" * 300
    call = {"function": {"name": "f", "arguments": arguments}}
    body = {"model": "llama3.2", "messages": [{"role": "assistant", "content": "", "tool_calls": [call]}]}
    response = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400 and "deeper than 254 levels" in response.json()["error"]["message"]


# -- options as Ollama's Options.FromMap reads them ------------------------------------------------------


def test_null_options_are_unset_not_refused(client: httpx.Client, emulator: EmulatorServer) -> None:
    options = {"temperature": None, "num_ctx": None, "mirostat": None, "stop": None, "num_predict": 2}
    body = {"model": "llama3.2", "prompt": "nulls", "stream": False, "options": options}
    assert client.post("/api/generate", json=body, headers=AUTH).status_code == 200
    (sent,) = upstream_bodies(emulator, "nulls")
    assert None not in orjson.loads(sent)["options"].values()


def test_null_options_on_embeddings_are_unset_not_refused(client: httpx.Client) -> None:
    body = {"model": "all-minilm", "input": "x", "options": {"num_ctx": None, "temperature": None, "top_k": None}}
    assert client.post("/api/embed", json=body, headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("option", "value"),
    [("stop", 1), ("stop", "x"), ("stop", [1]), ("use_mmap", "yes"), ("num_thread", "2"), ("temperature", 1e300)],
)
def test_an_option_of_the_wrong_type_is_a_400_naming_it(client: httpx.Client, option: str, value: object) -> None:
    body = {"model": "llama3.2", "prompt": "x", "stream": False, "options": {option: value}}
    response = client.post("/api/generate", json=body, headers=AUTH)
    assert response.status_code == 400 and f'option "{option}"' in response.json()["error"], response.text


def test_an_openai_temperature_given_as_text_is_an_openai_400(client: httpx.Client) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "temperature": "NaN"}
    response = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "temperature" in response.json()["error"]["message"]


# -- runner options: any that differs from the loaded runner's reloads the model for everyone ---------

RUNNER = {"num_batch": 64, "num_thread": 1, "use_mmap": False, "num_gpu": 0, "main_gpu": 1, "draft_num_predict": 4}


def test_an_ordinary_users_runner_options_never_reach_ollama(client: httpx.Client, emulator: EmulatorServer) -> None:
    body = {"model": "llama3.2", "prompt": "runner by user", "stream": False, "options": {"num_predict": 2, **RUNNER}}
    assert client.post("/api/generate", json={**body, "shift": False}, headers=AUTH).status_code == 200
    (sent,) = upstream_bodies(emulator, "runner by user")
    upstream = orjson.loads(sent)
    assert set(upstream["options"]) == {"num_predict", "num_ctx"} and "shift" not in upstream


def test_an_admins_runner_options_reach_ollama(client: httpx.Client, emulator: EmulatorServer) -> None:
    body = {"model": "llama3.2", "prompt": "runner by admin", "stream": False, "options": {"num_predict": 2, **RUNNER}}
    assert client.post("/api/generate", json=body, headers=ADMIN).status_code == 200
    (sent,) = upstream_bodies(emulator, "runner by admin")
    assert orjson.loads(sent)["options"].items() >= RUNNER.items()


def test_the_gateways_runner_options_go_with_every_load_and_request(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    host = host_factory(runner_options={"num_thread": 4, "use_mmap": False})
    body = {"model": "llama3.2", "prompt": "owned runner", "stream": False, "options": {"num_thread": 1}}
    assert httpx.post(host.url + "/llm/api/generate", json=body, headers=AUTH, timeout=15).status_code == 200
    loads = [r.json for r in emulator.emulator.requests if r.path == "/api/generate" and not r.json.get("prompt")]
    (sent,) = upstream_bodies(emulator, "owned runner")
    for upstream in (*loads, orjson.loads(sent)):
        assert upstream["options"]["num_thread"] == 4 and upstream["options"]["use_mmap"] is False, upstream
    assert loads
