"""The coding agents' APIs: the anthropic client on /v1/messages (Claude Code's API) and the openai
client's Responses API on /v1/responses (Codex's), each against the real Ollama's own endpoint and
through the gateway, which serves both from /api/chat; the answers must be equal field by field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from ollama_asgi.testing.real import RealOllama
from tests.conftest import API_KEY
from tests.real.compare import SENTENCE, VARYING, Pair, gateway_url

# Beside what differs on every call anyway: ids of calls and items, and clocks, made up per answer.
AGENT_VARYING = VARYING | {"completed_at", "call_id", "item_id", "request_id"}
CITY_TOOL = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Current weather in a city", "input_schema": CITY_TOOL}
RESPONSES_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": CITY_TOOL,
}
HI: Any = [{"role": "user", "content": "hi"}]


def stable(value: Any) -> Any:
    """An answer or event as plain data, less what differs on every call."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in AGENT_VARYING}
    if isinstance(value, list | tuple):
        return [stable(v) for v in value]
    return value


@pytest.fixture(scope="module")
def llm_url(ollama: RealOllama) -> Iterator[str]:
    with gateway_url(ollama) as url:
        yield url


@pytest.fixture
def claude(ollama: RealOllama, llm_url: str) -> Pair:
    """The anthropic client as Claude Code configures it: a base URL and a key (sent as X-Api-Key)."""
    return Pair(
        anthropic.Anthropic(base_url=ollama.url, api_key="ollama"),
        anthropic.Anthropic(base_url=llm_url, api_key=API_KEY),
    )


@pytest.fixture
def codex(ollama: RealOllama, llm_url: str) -> Pair:
    return Pair(
        openai.OpenAI(base_url=ollama.url + "/v1", api_key="ollama"),
        openai.OpenAI(base_url=llm_url + "/v1", api_key=API_KEY),
    )


# ------------------------------------------------------------------------------------- /v1/messages


def test_message_with_a_system_prompt(claude: Pair) -> None:
    direct, gateway = claude.each(
        lambda c: c.messages.create(model="tiny", max_tokens=100, system="be brief", messages=HI)
    )
    assert direct.content[0].text == SENTENCE
    assert (direct.stop_reason, direct.usage.output_tokens) == ("end_turn", 10)
    assert stable(gateway) == stable(direct)


def test_message_cut_by_max_tokens(claude: Pair) -> None:
    direct, gateway = claude.each(lambda c: c.messages.create(model="tiny", max_tokens=3, messages=HI))
    assert direct.stop_reason == "max_tokens"
    assert stable(gateway) == stable(direct)


def test_message_streamed_event_by_event(claude: Pair) -> None:
    direct, gateway = claude.each(
        lambda c: list(c.messages.create(model="tiny", max_tokens=100, system="be brief", messages=HI, stream=True))
    )
    assert [e.type for e in direct][:2] == ["message_start", "content_block_start"]
    assert [e.type for e in direct][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert stable(gateway) == stable(direct)


def test_tool_use(claude: Pair) -> None:
    direct, gateway = claude.each(
        lambda c: c.messages.create(model="tools", max_tokens=100, tools=[ANTHROPIC_TOOL], messages=HI)
    )
    assert [(b.type, b.name, b.input) for b in direct.content] == [("tool_use", "get_weather", {"city": "Paris"})]
    assert direct.stop_reason == "tool_use"
    assert stable(gateway) == stable(direct)


def test_two_tool_uses_streamed_event_by_event(claude: Pair) -> None:
    direct, gateway = claude.each(
        lambda c: list(
            c.messages.create(model="tools2", max_tokens=100, tools=[ANTHROPIC_TOOL], messages=HI, stream=True)
        )
    )
    assert [e.delta.partial_json for e in direct if e.type == "content_block_delta"] == [
        '{"city":"Paris"}',
        '{"city":"London"}',
    ]
    assert stable(gateway) == stable(direct)


def test_stream_helper_assembles_two_tool_uses(claude: Pair) -> None:
    def final(client: anthropic.Anthropic) -> anthropic.types.Message:
        with client.messages.stream(model="tools2", max_tokens=100, tools=[ANTHROPIC_TOOL], messages=HI) as stream:  # type: ignore[list-item]
            return stream.get_final_message()

    direct, gateway = claude.each(final)
    assert [b.input for b in direct.content] == [{"city": "Paris"}, {"city": "London"}]  # type: ignore[union-attr]
    assert stable(gateway) == stable(direct)


def test_tool_result_sent_back(claude: Pair) -> None:
    messages: Any = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}]},
    ]
    direct, gateway = claude.each(
        lambda c: c.messages.create(model="tiny", max_tokens=100, tools=[ANTHROPIC_TOOL], messages=messages)
    )
    assert direct.usage.input_tokens > 20
    assert stable(gateway) == stable(direct)


def test_thinking_asked_of_a_model_that_cannot_think_is_dropped(claude: Pair) -> None:
    direct, gateway = claude.each(
        lambda c: c.messages.create(
            model="tiny", max_tokens=100, messages=HI, thinking={"type": "enabled", "budget_tokens": 64}
        )
    )
    assert direct.content[0].text == SENTENCE
    assert stable(gateway) == stable(direct)


def test_unknown_model_is_the_same_anthropic_error(claude: Pair) -> None:
    def error(client: anthropic.Anthropic) -> tuple[int, object]:
        with pytest.raises(anthropic.NotFoundError) as info:
            client.messages.create(model="nope", max_tokens=10, messages=HI)
        return info.value.status_code, stable(info.value.body)

    direct, gateway = claude.each(error)
    assert direct == (404, {"type": "error", "error": {"type": "not_found_error", "message": "model 'nope' not found"}})
    assert gateway == direct


# ------------------------------------------------------------------------------------ /v1/responses


def test_response_with_instructions(codex: Pair) -> None:
    direct, gateway = codex.each(lambda c: c.responses.create(model="tiny", input="hi", instructions="be brief"))
    assert direct.output_text == SENTENCE
    assert stable(gateway) == stable(direct)


def test_response_streamed_event_by_event(codex: Pair) -> None:
    direct, gateway = codex.each(
        lambda c: list(c.responses.create(model="tiny", input=HI, max_output_tokens=5, stream=True))
    )
    assert [e.type for e in direct][:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert direct[-1].type == "response.completed"
    assert [e.sequence_number for e in direct] == list(range(len(direct)))
    assert stable(gateway) == stable(direct)


def test_function_call(codex: Pair) -> None:
    direct, gateway = codex.each(lambda c: c.responses.create(model="tools", input="hi", tools=[RESPONSES_TOOL]))
    assert [(o.type, o.name, o.arguments) for o in direct.output] == [
        ("function_call", "get_weather", '{"city":"Paris"}')
    ]
    assert stable(gateway) == stable(direct)


def test_two_function_calls_streamed_event_by_event(codex: Pair) -> None:
    direct, gateway = codex.each(
        lambda c: list(c.responses.create(model="tools2", input="hi", tools=[RESPONSES_TOOL], stream=True))
    )
    done = [e.item.arguments for e in direct if e.type == "response.output_item.done"]
    assert done == ['{"city":"Paris"}', '{"city":"London"}']
    assert stable(gateway) == stable(direct)


def test_function_call_output_sent_back(codex: Pair) -> None:
    history: Any = [
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    direct, gateway = codex.each(lambda c: c.responses.create(model="tiny", input=history, tools=[RESPONSES_TOOL]))
    assert direct.output_text == SENTENCE
    assert stable(gateway) == stable(direct)


def test_invalid_reasoning_effort_is_the_same_openai_error(codex: Pair) -> None:
    def error(client: openai.OpenAI) -> tuple[int, object]:
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(model="tiny", input="hi", reasoning={"effort": "huge"})  # type: ignore[call-overload]
        return info.value.status_code, info.value.body

    direct, gateway = codex.each(error)
    assert direct[0] == 400
    assert gateway == direct
