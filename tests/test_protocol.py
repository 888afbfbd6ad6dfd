from __future__ import annotations

import pytest

from ollama_asgi.errors import GatewayError
from ollama_asgi.protocol import canonical_model, parse_keep_alive, parse_request
from ollama_asgi.routing import match_route

CHAT = match_route("/api/chat")
OPENAI_CHAT = match_route("/v1/chat/completions")


def parse(raw: bytes, route=CHAT):  # type: ignore[no-untyped-def]
    return parse_request(route, raw, max_num_ctx=131072)  # type: ignore[arg-type]


def test_stream_defaults_to_true_on_native_and_false_on_openai() -> None:
    assert parse(b'{"model":"m"}').stream is True
    assert parse(b'{"model":"m","stream":false}').stream is False
    assert parse(b'{"model":"m"}', OPENAI_CHAT).stream is False
    assert parse(b'{"model":"m","stream":true}', OPENAI_CHAT).stream is True


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing request body"),
        (b"{not json", "invalid JSON"),
        (b"[1,2]", "must be a JSON object"),
        (b'{"model": ""}', "model is required"),
        (b'{"prompt": "hi"}', "model is required"),
        (b'{"model": 7}', "model must be a string"),
        (b'{"model": "../../etc/passwd"}', "invalid model name"),
        (b'{"model": "a/b/c/d"}', "invalid model name"),
        (b'{"model": "m", "stream": "yes"}', "stream must be a boolean"),
        (b'{"model": "m", "options": []}', "options must be an object"),
        (b'{"model": "m", "options": {"num_ctx": "big"}}', 'option "num_ctx" must be of type integer'),
        (b'{"model": "m", "options": {"num_ctx": 0}}', "num_ctx must be between 1 and 131072"),
        (b'{"model": "m", "options": {"num_ctx": 99999999999}}', "num_ctx must be between"),
        (b'{"model": "m", "options": {"temperature": "hot"}}', 'option "temperature" must be of type number'),
        (b'{"model": "m", "keep_alive": "3600"}', 'missing unit in duration "3600"'),
        (b'{"model": "m", "keep_alive": true}', "Unsupported type: 'boolean'"),
        (b'{"model": "m", "messages": "hi"}', "messages must be an array"),
        (b"\xff\xfe{}", "invalid JSON"),
        (b"[" * 5000 + b"]" * 5000, "invalid JSON"),
    ],
)
def test_bad_bodies_get_a_clear_400(raw: bytes, message: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse(raw)
    assert info.value.status == 400
    assert message in info.value.message


def test_openai_integer_fields_are_checked() -> None:
    with pytest.raises(GatewayError, match="max_tokens must be an integer"):
        parse(b'{"model":"m","max_tokens":"10"}', OPENAI_CHAT)


@pytest.mark.parametrize(
    "name", ["llama3.2", "llama3.2:latest", "library/llama3.2:3b", "hf.co/org/model:Q4_K_M", "localhost:5000/ns/m:t"]
)
def test_real_model_names_are_accepted(name: str) -> None:
    assert parse(b'{"model":"%s"}' % name.encode()).model == name


def test_show_accepts_name_as_well_as_model() -> None:
    assert parse(b'{"name":"llama3.2"}', match_route("/api/show")).model == "llama3.2"


@pytest.mark.parametrize(
    ("value", "seconds"), [(3600, 3600.0), (1.5, 1.5), ("10m", 600.0), ("-1", None), ("-1m", -60.0), (0, 0.0)]
)
def test_keep_alive_is_read_like_ollama(value: object, seconds: float | None) -> None:
    if seconds is None:
        with pytest.raises(GatewayError):
            parse_keep_alive(value)
    else:
        assert parse_keep_alive(value) == seconds


def test_canonical_model_adds_latest_and_lowercases() -> None:
    assert canonical_model("Llama3.2") == "llama3.2:latest"
    assert canonical_model("llama3.2:3b") == "llama3.2:3b"
    assert canonical_model("localhost:5000/ns/m") == "localhost:5000/ns/m:latest"
