"""The /v1 requests in native form, as Ollama's own ``/v1`` layer maps them."""

from __future__ import annotations

from typing import Any

import pytest

from ollama_asgi.errors import GatewayError
from ollama_asgi.openai_compat import check_field_types, to_native

HI = [{"role": "user", "content": "hi"}]


def native_chat(**request: Any) -> dict[str, Any]:
    return to_native("openai_chat", {"model": "m", "messages": HI, **request})[1]


def refusal(route: str, **request: Any) -> str:
    with pytest.raises(GatewayError) as info:
        to_native(route, {"model": "m", "messages": HI, **request})
    assert info.value.status == 400
    return str(info.value.message)


# --------------------------------------------------------------------------------------- messages


def test_each_content_part_is_a_message_of_its_own() -> None:
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    assert native_chat(messages=[{"role": "user", "content": parts}])["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "", "images": ["AAAA"]},
    ]


def test_tool_calls_beside_content_parts_go_on_the_last_part() -> None:
    calls = [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    messages = native_chat(messages=[*HI, {"role": "assistant", "content": parts, "tool_calls": calls}])["messages"]
    assert [m.get("tool_calls") for m in messages[1:]] == [
        None,
        [{"id": "call_1", "function": {"name": "f", "arguments": {}}}],
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "invalid message content type: <nil>"),
        (5, "invalid message content type: float64"),
        ([{"type": "audio"}], "invalid message format"),
        (
            [{"type": "image_url", "image_url": "https://example.com/a.png"}],
            "image URLs are not currently supported, please use base64 encoded data instead",
        ),
        ([{"type": "image_url", "image_url": "data:image/gif;base64,AAAA"}], "invalid image input"),
        ([{"type": "image_url", "image_url": "data:image/png;base64,!!"}], "invalid image input"),
    ],
)
def test_content_ollama_cannot_read_is_refused_with_its_words(content: object, message: str) -> None:
    assert refusal("openai_chat", messages=[{"role": "user", "content": content}]) == message


def test_content_may_be_left_out_beside_tool_calls() -> None:
    calls = [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]
    message = native_chat(messages=[*HI, {"role": "assistant", "content": None, "tool_calls": calls}])["messages"][1]
    assert message["content"] == ""


def test_chat_skips_stop_entries_that_are_not_strings() -> None:
    assert native_chat(stop=["fox", 1])["options"]["stop"] == ["fox"]


def test_completions_refuse_stop_entries_that_are_not_strings() -> None:
    assert refusal("openai_completions", prompt="hi", stop=["fox", 1]) == "invalid type for 'stop' field: float64"


# ------------------------------------------------------------------------------------- tool calls


def test_assistant_calls_are_sent_on_with_their_ids() -> None:
    messages = [
        *HI,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
    ]
    native = native_chat(messages=messages)
    assert native["messages"][1]["tool_calls"] == [
        {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]


def test_a_tool_result_is_named_after_the_call_its_id_names() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    messages = [
        *HI,
        {"role": "assistant", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    ]
    tool = native_chat(messages=messages)["messages"][2]
    assert (tool["tool_call_id"], tool["tool_name"]) == ("call_2", "get_time")


def test_a_tool_results_own_name_wins_over_its_call_id() -> None:
    messages = [
        *HI,
        {"role": "assistant", "tool_calls": [{"id": "call_1", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "weather", "content": "sunny"},
    ]
    assert native_chat(messages=messages)["messages"][2]["tool_name"] == "weather"


def test_only_tool_results_get_a_tool_name() -> None:
    native = native_chat(messages=[{"role": "user", "name": "ann", "content": "hi"}])
    assert "tool_name" not in native["messages"][0]


# --------------------------------------------------------------------------------------- logprobs


def test_chat_logprobs_are_asked_of_ollama() -> None:
    native = native_chat(logprobs=True, top_logprobs=2)
    assert (native["logprobs"], native["top_logprobs"]) == (True, 2)


def test_chat_without_logprobs_asks_for_none() -> None:
    assert {"logprobs", "top_logprobs"}.isdisjoint(native_chat())


@pytest.mark.parametrize("top", [-1, 21])
def test_top_logprobs_out_of_range_is_refused_as_by_ollama(top: int) -> None:
    assert refusal("openai_chat", top_logprobs=top) == "top_logprobs must be between 0 and 20"


def test_a_completions_logprobs_count_asks_for_that_many_alternatives() -> None:
    native = to_native("openai_completions", {"model": "m", "prompt": "hi", "logprobs": 3})[1]
    assert (native["logprobs"], native["top_logprobs"]) == (True, 3)


def test_a_completions_logprobs_count_over_20_is_refused_as_by_ollama() -> None:
    assert refusal("openai_completions", prompt="hi", logprobs=25) == "top_logprobs must be between 0 and 20"


# ------------------------------------------------------------------------------------ embeddings


def native_embed(**request: Any) -> dict[str, Any]:
    return to_native("openai_embeddings", {"model": "m", **request})[1]


def test_an_empty_string_is_embedded_not_a_load() -> None:
    assert native_embed(input="")["input"] == [""]


@pytest.mark.parametrize("request_input", [None, []])
def test_no_input_is_refused_as_by_ollama(request_input: object) -> None:
    with pytest.raises(GatewayError, match="^invalid input$"):
        native_embed(input=request_input)


def test_an_unknown_encoding_format_is_refused_with_ollamas_words() -> None:
    with pytest.raises(GatewayError) as info:
        native_embed(input="a", encoding_format="hex")
    assert info.value.message == "Invalid value for 'encoding_format' = hex. Supported values: ['float', 'base64']."


# ---------------------------------------------------------------------------------- field types


def wrong_type(route: str, body: dict[str, Any]) -> str:
    with pytest.raises(GatewayError) as info:
        check_field_types(route, body)
    return str(info.value.message)


def test_a_field_of_the_wrong_type_is_refused_in_gos_words() -> None:
    assert wrong_type("openai_chat", {"tools": "x"}) == (
        "json: cannot unmarshal string into Go struct field ChatCompletionRequest.tools of type []api.Tool"
    )


def test_the_first_wrong_field_in_the_body_is_the_one_named() -> None:
    assert "ChatCompletionRequest.temperature " in wrong_type("openai_chat", {"temperature": "hot", "tools": "x"})


def test_a_fraction_for_an_integer_field_is_named_with_its_value() -> None:
    assert wrong_type("openai_completions", {"logprobs": 2.5}) == (
        "json: cannot unmarshal number 2.5 into Go struct field CompletionRequest.logprobs of type int"
    )


def test_nulls_and_fields_of_the_right_type_pass() -> None:
    check_field_types("openai_chat", {"model": "m", "tools": None, "seed": 3, "top_p": 1, "response_format": {}})


# ------------------------------------------------------------------------------ reasoning effort


@pytest.mark.parametrize(("effort", "think"), [("low", "low"), ("high", "high"), ("max", "max"), ("none", False)])
def test_reasoning_effort_becomes_think(effort: str, think: object) -> None:
    assert native_chat(reasoning_effort=effort)["think"] == think


def test_a_reasoning_object_wins_over_reasoning_effort() -> None:
    assert native_chat(reasoning={"effort": "low"}, reasoning_effort="high")["think"] == "low"


def test_an_unknown_reasoning_effort_is_refused_with_ollamas_words() -> None:
    assert refusal("openai_chat", reasoning_effort="extreme") == (
        'invalid reasoning value: \'extreme\' (must be "high", "medium", "low", "max", or "none")'
    )
