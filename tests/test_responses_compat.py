"""Responses API requests to /api/chat, as Ollama's /v1/responses translates them."""

from __future__ import annotations

from typing import Any

import pytest

from ollama_asgi.errors import GatewayError
from ollama_asgi.responses_compat import to_native


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "input": "hi", **fields}


def test_instructions_are_a_system_message_and_temperature_defaults_to_one() -> None:
    _, body, _ = to_native(request(instructions="be brief", max_output_tokens=9))
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert body["options"] == {"temperature": 1.0, "num_predict": 9}


def test_reasoning_goes_with_the_assistant_turn_after_it() -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "reasoning", "summary": [], "encrypted_content": "look it up"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    _, body, _ = to_native(request(input=items))
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
            "thinking": "look it up",
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]


def test_arguments_that_are_not_json_are_refused() -> None:
    items = [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{nope"}]
    with pytest.raises(GatewayError, match="failed to parse function call arguments"):
        to_native(request(input=items))


def test_an_image_by_url_is_refused_in_ollamas_words() -> None:
    items = [{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}]
    with pytest.raises(GatewayError, match="image URLs are not currently supported"):
        to_native(request(input=items))


@pytest.mark.parametrize(("effort", "think"), [("none", False), ("low", "low"), ("max", "max")])
def test_reasoning_effort_becomes_think(effort: str, think: object) -> None:
    _, body, _ = to_native(request(reasoning={"effort": effort}))
    assert body["think"] == think


def test_a_json_schema_text_format_is_the_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    _, body, _ = to_native(request(text={"format": {"type": "json_schema", "name": "x", "schema": schema}}))
    assert body["format"] == schema


def test_tools_become_functions() -> None:
    tool = {"type": "function", "name": "get_weather", "description": "weather", "parameters": {"type": "object"}}
    _, body, _ = to_native(request(tools=[tool]))
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "weather", "parameters": {"type": "object"}},
        }
    ]
