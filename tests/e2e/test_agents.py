"""/v1/messages and /v1/responses served through Ollama's native /api/chat, checked with the
anthropic client and the openai client's Responses API against the emulator: what reaches Ollama,
and errors in each API's own shape."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ollama_asgi.testing import EmulatorServer, Fault
from tests.conftest import ADMIN, API_KEY, AUTH
from tests.support.rawhttp import request
from tests.support.server import ServerThread
from tests.test_metrics import scrape_when, value

HI: Any = [{"role": "user", "content": "hi"}]
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture
def claude(llm_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=llm_url, api_key=API_KEY, max_retries=0)


@pytest.fixture
def codex(llm_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm_url + "/v1", api_key=API_KEY, max_retries=0)


def sent_chat(emulator: EmulatorServer) -> dict[str, Any]:
    """The last native chat request the gateway made."""
    body = [r.json for r in emulator.emulator.requests if r.path == "/api/chat"][-1]
    assert isinstance(body, dict)
    return body


def two_calls(model: str, prompt: str) -> list[str]:
    return [
        '{"name": "get_weather", "parameters": {"city": "Paris"}} ',
        '{"name": "get_weather", "parameters": {"city": "London"}}',
    ]


# ------------------------------------------------------------------------------------- /v1/messages


def test_a_message_reaches_ollama_as_a_chat_with_the_gateways_context_and_keep_alive(
    claude: anthropic.Anthropic, emulator: EmulatorServer
) -> None:
    claude.messages.create(
        model="llama3.2", max_tokens=50, system="be brief", messages=HI, extra_body={"temperature": 0.2}
    )
    sent = sent_chat(emulator)
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert sent["options"]["num_predict"] == 50 and sent["options"]["temperature"] == 0.2
    assert sent["options"]["num_ctx"] > 0 and sent["keep_alive"] is not None


def test_tool_results_reach_ollama_as_tool_messages_after_the_call(
    claude: anthropic.Anthropic, emulator: EmulatorServer
) -> None:
    claude.messages.create(
        model="llama3.2",
        max_tokens=50,
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "call_7", "name": "get_weather", "input": {}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_7", "content": "sunny"}]},
        ],
    )
    sent = sent_chat(emulator)["messages"]
    assert sent[1]["tool_calls"] == [{"id": "call_7", "function": {"name": "get_weather", "arguments": {}}}]
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_7"}


def test_thinking_is_not_asked_of_a_model_that_cannot_think(
    claude: anthropic.Anthropic, emulator: EmulatorServer
) -> None:
    claude.messages.create(
        model="llama3.2", max_tokens=50, messages=HI, thinking={"type": "enabled", "budget_tokens": 64}
    )
    assert "think" not in sent_chat(emulator)


def test_thinking_is_asked_of_a_model_that_can_think(claude: anthropic.Anthropic, emulator: EmulatorServer) -> None:
    claude.messages.create(
        model="qwen3:0.6b", max_tokens=50, messages=HI, thinking={"type": "enabled", "budget_tokens": 64}
    )
    assert sent_chat(emulator)["think"] is True


def test_a_thinking_model_streams_a_thinking_block_before_the_text(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="qwen3:0.6b", max_tokens=50, messages=HI, thinking={"type": "enabled", "budget_tokens": 64}
    ) as stream:
        message = stream.get_final_message()
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking  # type: ignore[union-attr]


def test_two_streamed_tool_uses_are_two_blocks(claude: anthropic.Anthropic, emulator: EmulatorServer) -> None:
    emulator.emulator.reply = two_calls
    tool: Any = {"name": "get_weather", "input_schema": CITY}
    with claude.messages.stream(model="llama3.2", max_tokens=50, tools=[tool], messages=HI) as stream:
        message = stream.get_final_message()
    assert [(b.type, b.input) for b in message.content] == [  # type: ignore[union-attr]
        ("tool_use", {"city": "Paris"}),
        ("tool_use", {"city": "London"}),
    ]
    assert message.stop_reason == "tool_use"


def test_the_anthropic_client_key_is_accepted_from_x_api_key(llm_url: str) -> None:
    response = httpx.post(
        llm_url + "/v1/messages",
        headers={"x-api-key": API_KEY},
        json={"model": "llama3.2", "max_tokens": 5, "messages": HI},
    )
    assert response.status_code == 200 and response.json()["type"] == "message"


def test_a_wrong_key_is_a_401_in_anthropics_shape(llm_url: str) -> None:
    client = anthropic.Anthropic(base_url=llm_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(model="llama3.2", max_tokens=5, messages=HI)
    body: Any = info.value.body
    assert body["type"] == "error"
    assert body["error"] == {"type": "authentication_error", "message": "authentication required"}
    assert body["request_id"].startswith("req_")


def test_a_missing_max_tokens_is_a_400_in_anthropics_shape(llm_url: str, emulator: EmulatorServer) -> None:
    response = httpx.post(
        llm_url + "/v1/messages", headers={"x-api-key": API_KEY}, json={"model": "llama3.2", "messages": HI}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error == {"type": "invalid_request_error", "message": "max_tokens is required and must be positive"}
    assert not [r for r in emulator.emulator.requests if r.path == "/api/chat"]


def test_an_unknown_model_is_an_anthropic_not_found(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="nope", max_tokens=5, messages=HI)
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_an_upstream_error_mid_stream_is_raised_by_the_anthropic_client(
    claude: anthropic.Anthropic, emulator: EmulatorServer
) -> None:
    emulator.emulator.inject(Fault(path="/api/chat", kind="midstream_error", after_lines=2, message="runner crashed"))
    stream = claude.messages.create(model="llama3.2", max_tokens=50, messages=HI, stream=True)
    with pytest.raises(anthropic.APIStatusError, match="runner crashed"):
        for _ in stream:
            pass


def test_a_stream_that_times_out_in_the_queue_after_keep_alive_comments_ends_with_anthropics_error(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.05
    server = host_factory(parallel=1, sse_keepalive=0.1, queue_timeout=0.5)
    busy = {"model": "llama3.2", "prompt": "b", "options": {"num_predict": 40}}
    blocker = request(server.url + "/llm/api/generate", body=json.dumps(busy).encode(), headers=AUTH)
    time.sleep(0.1)
    client = anthropic.Anthropic(base_url=server.url + "/llm", api_key=API_KEY, max_retries=0)
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error") as info:
        for _ in client.messages.create(model="llama3.2", max_tokens=5, messages=HI, stream=True):
            pass
    assert info.value.status_code == 200  # raised from the event: the stream had started with comments
    blocker.chunks()


# ------------------------------------------------------------------------------------ /v1/responses


def test_a_response_reaches_ollama_as_a_chat_with_the_gateways_context_and_keep_alive(
    codex: openai.OpenAI, emulator: EmulatorServer
) -> None:
    codex.responses.create(model="llama3.2", input="hi", instructions="be brief", max_output_tokens=40)
    sent = sent_chat(emulator)
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert sent["options"]["num_predict"] == 40 and sent["options"]["temperature"] == 1.0
    assert sent["options"]["num_ctx"] > 0 and sent["keep_alive"] is not None


def test_a_model_thinking_by_default_answers_with_a_reasoning_item_before_the_message(codex: openai.OpenAI) -> None:
    events = list(codex.responses.create(model="qwen3:0.6b", input="hi", stream=True))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert [item.type for item in completed.response.output] == ["reasoning", "message"]
    assert completed.response.output_text


def test_a_function_call_and_its_output_reach_ollama_as_a_call_and_a_tool_message(
    codex: openai.OpenAI, emulator: EmulatorServer
) -> None:
    history: Any = [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "call_7", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_7", "output": "sunny"},
    ]
    codex.responses.create(model="llama3.2", input=history)
    sent = sent_chat(emulator)["messages"]
    assert sent[1]["tool_calls"] == [
        {"id": "call_7", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_7"}


def test_a_streamed_function_call_ends_with_the_call_in_the_completed_response(
    codex: openai.OpenAI, emulator: EmulatorServer
) -> None:
    emulator.emulator.reply = two_calls
    tool: Any = {"type": "function", "name": "get_weather", "parameters": CITY, "strict": None}
    events = list(codex.responses.create(model="llama3.2", input="weather?", tools=[tool], stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    calls = [(o.name, o.arguments) for o in completed.response.output]  # type: ignore[union-attr]
    assert calls == [("get_weather", '{"city":"Paris"}'), ("get_weather", '{"city":"London"}')]


def test_an_unknown_input_item_is_a_400_in_openais_shape(codex: openai.OpenAI, emulator: EmulatorServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        codex.responses.create(model="llama3.2", input=[{"type": "telepathy"}])  # type: ignore[list-item]
    assert info.value.body == {
        "message": 'input[0]: unknown input item type: "telepathy"',
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert not [r for r in emulator.emulator.requests if r.path == "/api/chat"]


def test_an_unknown_model_is_an_openai_not_found(codex: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        codex.responses.create(model="nope", input="hi")


def test_an_upstream_error_mid_stream_ends_with_response_failed(codex: openai.OpenAI, emulator: EmulatorServer) -> None:
    emulator.emulator.inject(Fault(path="/api/chat", kind="midstream_error", after_lines=2, message="runner crashed"))
    events = list(codex.responses.create(model="llama3.2", input="a b c d", stream=True))
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed"
    assert failed.response.error is not None and failed.response.error.message == "runner crashed"


# --------------------------------------------------------------------------------------- both routes


def test_tokens_of_both_routes_are_counted_from_ollamas_final_chunk(
    claude: anthropic.Anthropic, codex: openai.OpenAI, llm_url: str
) -> None:
    message = claude.messages.create(model="llama3.2", max_tokens=5, messages=HI)
    response = codex.responses.create(model="llama3.2", input="hi", max_output_tokens=3, stream=False)
    assert response.usage is not None
    requests = "ollama_asgi_requests_total"
    metrics = scrape_when(llm_url + "/_gateway/metrics", lambda m: value(m, requests) >= 2, ADMIN)
    assert value(metrics, requests, route="anthropic_messages", status="200") == 1
    assert value(metrics, requests, route="openai_responses", status="200") == 1
    completion = message.usage.output_tokens + response.usage.output_tokens
    assert value(metrics, "ollama_asgi_completion_tokens_total") == completion == 8
    assert value(metrics, "ollama_asgi_prompt_tokens_total") == message.usage.input_tokens + response.usage.input_tokens
