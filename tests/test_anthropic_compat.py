"""Anthropic Messages requests to /api/chat, as Ollama's /v1/messages translates them."""

from __future__ import annotations

from typing import Any

import pytest

from ollama_asgi.anthropic_compat import to_native
from ollama_asgi.errors import GatewayError


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **fields}


def test_a_system_prompt_given_as_blocks_is_one_system_message() -> None:
    system = [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]
    _, body, _ = to_native(request(system=system))
    assert body["messages"][0] == {"role": "system", "content": "be brief"}


def test_max_tokens_is_num_predict_and_stop_sequences_are_stop() -> None:
    _, body, _ = to_native(request(stop_sequences=["END"], top_k=5))
    assert body["options"] == {"num_predict": 64, "top_k": 5, "stop": ["END"]}


@pytest.mark.parametrize("max_tokens", [None, 0, -1, "64"])
def test_max_tokens_must_be_a_positive_integer(max_tokens: object) -> None:
    with pytest.raises(GatewayError, match="max_tokens is required and must be positive"):
        to_native(request(max_tokens=max_tokens))


def test_a_user_turn_puts_its_tool_results_before_its_text() -> None:
    content = [
        {"type": "text", "text": "and now?"},
        {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
    ]
    _, body, _ = to_native(request(messages=[{"role": "user", "content": content}]))
    assert body["messages"] == [
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "user", "content": "and now?"},
    ]


def test_a_tool_use_without_an_id_is_refused() -> None:
    content = [{"type": "tool_use", "name": "get_weather", "input": {}}]
    with pytest.raises(GatewayError, match="tool_use block missing required 'id' field"):
        to_native(request(messages=[{"role": "assistant", "content": content}]))


def test_an_image_by_url_is_refused() -> None:
    content = [{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]
    with pytest.raises(GatewayError, match="invalid image source type: url"):
        to_native(request(messages=[{"role": "user", "content": content}]))


def test_a_base64_image_reaches_ollama_as_an_image() -> None:
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}}]
    _, body, _ = to_native(request(messages=[{"role": "user", "content": content}]))
    assert body["messages"] == [{"role": "user", "content": "", "images": ["aGk="]}]


def test_custom_tools_become_functions_and_web_search_is_left_out() -> None:
    tools = [
        {"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search"},
    ]
    _, body, _ = to_native(request(tools=tools))
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "weather", "parameters": {"type": "object"}},
        }
    ]


@pytest.mark.parametrize(
    ("fields", "think"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, True),
        ({"thinking": {"type": "disabled"}}, False),
        ({"output_config": {"effort": "XHigh"}}, "high"),
        ({"output_config": {"effort": "low"}}, "low"),
        ({"output_config": {"effort": "none"}}, None),
    ],
)
def test_thinking_and_effort_become_think(fields: dict[str, Any], think: object) -> None:
    _, body, _ = to_native(request(**fields))
    assert body.get("think") == think
