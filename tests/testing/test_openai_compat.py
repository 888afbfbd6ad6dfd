"""The OpenAI-compatible /v1 layer, through the official openai client and raw HTTP."""

from __future__ import annotations

import base64
import math
import re
import struct

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from ollama_asgi.testing import EmulatorServer, Fault

from .conftest import Serve, sse

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello world"}]


@pytest.fixture
def oai(server: EmulatorServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="ignored", max_retries=0)


def test_chat_completion(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="llama3.2", messages=USER)
    assert re.fullmatch(r"chatcmpl-\d{1,3}", completion.id)
    assert completion.object == "chat.completion"
    assert completion.system_fingerprint == "fp_ollama"
    assert completion.choices[0].message.content == "hello world hello world hello world hello world"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.completion_tokens, completion.usage.total_tokens) == (8, 8 + 12)


def test_max_tokens_limits_the_reply(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="llama3.2", messages=USER, max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "hello world hello"


def test_streaming_chat_through_the_client(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(model="llama3.2", messages=USER, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello world " * 3 + "hello world"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_chunk_order_with_include_usage(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={"model": "llama3.2", "messages": USER, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert response.headers["content-type"] == "text/event-stream"
    assert "cache-control" not in response.headers
    events = sse(response)
    first, *middle, finish, usage, done = events
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "hello "}
    assert all("role" not in e["choices"][0]["delta"] for e in middle)
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8
    assert done == "[DONE]"
    assert len({e["id"] for e in events[:-1]}) == 1
    assert len({e["created"] for e in events[:-1]}) == 1


def test_stream_without_include_usage_has_no_usage_chunk(client: httpx.Client) -> None:
    events = sse(client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": USER, "stream": True}))
    assert all("usage" not in e for e in events[:-1])


def test_v1_does_not_stream_by_default(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": USER})
    assert response.headers["content-type"] == "application/json"
    assert response.text.endswith("}\n")


def test_tool_calls_carry_json_string_arguments(oai: openai.OpenAI) -> None:
    tool: ChatCompletionToolParam = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
        },
    }
    completion = oai.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "please lookup"}],
        tools=[tool],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "lookup"  # type: ignore[union-attr]
    assert call.function.arguments == '{"n":1}'  # type: ignore[union-attr]
    assert call.id.startswith("call_")


def test_empty_messages_is_an_openai_400(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": []})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "[] is too short - 'messages'",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def test_unknown_model_is_an_openai_404(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="nope", messages=USER)
    assert caught.value.body == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }


def test_empty_body_is_eof(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions")
    assert (response.status_code, response.json()["error"]["message"]) == (400, "EOF")


def test_busy_is_an_openai_503(serve: Serve) -> None:
    server = serve()
    server.emulator.inject(Fault(kind="busy"))
    response = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "llama3.2", "messages": USER})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "api_error"


def test_completions(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model="llama3.2", prompt="one two", max_tokens=4)
    assert re.fullmatch(r"cmpl-\d{1,3}", completion.id)
    assert completion.choices[0].text == "one two one two"
    assert completion.choices[0].finish_reason == "length"


def test_streaming_completions_with_usage_put_zero_usage_on_every_chunk(client: httpx.Client) -> None:
    events = sse(
        client.post(
            "/v1/completions",
            json={"model": "llama3.2", "prompt": "a", "stream": True, "stream_options": {"include_usage": True}},
        )
    )
    *chunks, usage, done = events
    assert all(c["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0} for c in chunks)
    assert chunks[-1]["choices"][0] == {"text": "", "index": 0, "finish_reason": "stop"}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8
    assert done == "[DONE]"


def test_embeddings_float(oai: openai.OpenAI) -> None:
    result = oai.embeddings.create(model="all-minilm", input=["a", "b"], encoding_format="float")
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert abs(math.sqrt(sum(v * v for v in result.data[0].embedding)) - 1) < 1e-6
    assert result.usage.prompt_tokens == 2


def test_embeddings_base64_are_little_endian_float32(client: httpx.Client) -> None:
    body = client.post("/v1/embeddings", json={"model": "all-minilm", "input": "a", "encoding_format": "base64"}).json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert len(struct.unpack(f"<{len(raw) // 4}f", raw)) == 384


def test_embeddings_reject_other_encodings(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"model": "all-minilm", "input": "a", "encoding_format": "hex"})
    assert response.status_code == 400
    assert "encoding_format" in response.json()["error"]["message"]


def test_models_list(oai: openai.OpenAI) -> None:
    models = {m.id: m for m in oai.models.list()}
    assert models["llama3.2:latest"].owned_by == "library"
    assert models["llama3.2:latest"].object == "model"


def test_models_list_is_null_when_empty(serve: Serve) -> None:
    assert httpx.get(f"{serve(models=()).url}/v1/models").json() == {"object": "list", "data": None}


def test_model_retrieve_echoes_the_id(oai: openai.OpenAI) -> None:
    assert oai.models.retrieve("llama3.2").id == "llama3.2"


def test_model_retrieve_missing_is_404(client: httpx.Client) -> None:
    response = client.get("/v1/models/ghost")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "model 'ghost' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
