"""/v1 served through Ollama's native API, checked with the official openai client."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import openai
import pytest

from ollama_asgi.testing import EmulatorServer, Fault
from tests.conftest import API_KEY, AUTH

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.fixture
def client(llm_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm_url + "/v1", api_key=API_KEY)


def test_tool_calls_come_back_with_string_arguments(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "call get_weather for Paris"}],
        tools=TOOLS,  # type: ignore[arg-type]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, str) and isinstance(json.loads(call.function.arguments), dict)


def test_streamed_tool_calls(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "call get_weather for Paris"}],
        tools=TOOLS,  # type: ignore[arg-type]
        stream=True,
    )
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function is not None and calls[0].function.name == "get_weather"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def two_calls(model: str, prompt: str) -> list[str]:
    """A model that answers with two calls, which Ollama's parser sends one per chunk."""
    return [
        '{"name": "get_weather", "parameters": {"city": "Paris"}} ',
        '{"name": "get_weather", "parameters": {"city": "London"}}',
    ]


def test_two_streamed_calls_are_assembled_as_two(client: openai.OpenAI, emulator: EmulatorServer) -> None:
    emulator.emulator.reply = two_calls
    with client.chat.completions.stream(
        model="llama3.2",
        messages=[{"role": "user", "content": "weather?"}],
        tools=TOOLS,  # type: ignore[arg-type]
    ) as stream:
        message = stream.get_final_completion().choices[0].message
    calls = message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", '{"city":"Paris"}'),
        ("get_weather", '{"city":"London"}'),
    ]
    assert len({c.id for c in calls}) == 2


def test_two_calls_in_a_whole_answer_keep_their_index(client: openai.OpenAI, emulator: EmulatorServer) -> None:
    emulator.emulator.reply = two_calls
    completion = client.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "weather?"}],
        tools=TOOLS,  # type: ignore[arg-type]
    )
    calls = [c.model_dump() for c in completion.choices[0].message.tool_calls or []]
    assert [(c["index"], c["function"]["arguments"]) for c in calls] == [
        (0, '{"city":"Paris"}'),
        (1, '{"city":"London"}'),
    ]


def test_a_tool_result_reaches_ollama_with_its_call_id_and_function_name(
    client: openai.OpenAI, emulator: EmulatorServer
) -> None:
    call = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    client.chat.completions.create(
        model="llama3.2",
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": "call_7", "content": "sunny"},
        ],
    )
    sent = [r.json for r in emulator.emulator.requests if r.path == "/api/chat"][-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_7"
    assert (sent[2]["tool_call_id"], sent[2]["tool_name"]) == ("call_7", "get_weather")


def test_logprobs_are_asked_of_ollama(client: openai.OpenAI, emulator: EmulatorServer) -> None:
    client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=2
    )
    sent = [r.json for r in emulator.emulator.requests if r.path == "/api/chat"][-1]
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)


def test_top_logprobs_over_20_is_refused_before_ollama_is_asked(
    client: openai.OpenAI, emulator: EmulatorServer
) -> None:
    with pytest.raises(openai.BadRequestError, match="top_logprobs must be between 0 and 20"):
        client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "x"}], top_logprobs=21)
    assert not [r for r in emulator.emulator.requests if r.path in ("/api/show", "/api/chat")]


def test_completions_streamed_with_usage_have_zero_usage_until_the_last(client: openai.OpenAI) -> None:
    parts = list(
        client.completions.create(
            model="llama3.2", prompt="red green blue", max_tokens=3, stream=True, stream_options={"include_usage": True}
        )
    )
    usages = [(p.usage.prompt_tokens, p.usage.completion_tokens) if p.usage else None for p in parts]
    assert usages[:-1] == [(0, 0)] * (len(parts) - 1)
    assert usages[-1] is not None and usages[-1][1] == 3


def test_a_whole_answer_ends_with_a_newline_as_ollamas_does(llm_url: str) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(llm_url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert response.content.endswith(b"}\n")


def test_completions_stream_and_whole(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="llama3.2", prompt="red green blue", max_tokens=3)
    assert whole.choices[0].text == "red green blue" and whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 3
    parts = list(client.completions.create(model="llama3.2", prompt="red green blue", max_tokens=3, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == "red green blue"


def test_base64_embeddings_decode_to_the_float_vectors(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model="nomic-embed-text", input="hello", encoding_format="float")
    packed = client.embeddings.with_raw_response.create(
        model="nomic-embed-text", input="hello", encoding_format="base64"
    )
    raw = json.loads(packed.text)["data"][0]["embedding"]
    decoded = struct.unpack("<768f", base64.b64decode(raw))
    assert decoded == pytest.approx(floats.data[0].embedding, rel=1e-6)


def test_upstream_error_mid_stream_reaches_the_openai_client(client: openai.OpenAI, emulator: EmulatorServer) -> None:
    emulator.emulator.inject(Fault(path="/api/chat", kind="midstream_error", after_lines=2, message="runner crashed"))
    stream = client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    with pytest.raises(openai.APIError, match="runner crashed"):
        for _ in stream:
            pass


def test_unknown_model_is_an_openai_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_an_unknown_embedding_model_is_refused_in_the_embed_routes_words(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match='model "nope" not found, try pulling it first'):
        client.embeddings.create(model="nope", input="x")


def test_empty_messages_are_rejected_like_ollama(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="too short"):
        client.chat.completions.create(model="llama3.2", messages=[])
