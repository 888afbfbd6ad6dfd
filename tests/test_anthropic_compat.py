"""Anthropic Messages requests to /api/chat and native chunks back, as Ollama's /v1/messages does it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ollama_asgi.anthropic_compat import MessagesStream, estimate_input_tokens, to_native, whole_message
from ollama_asgi.errors import GatewayError
from tests.support.native_chunks import CALL, DONE, chunk


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **fields}


def events(stream: MessagesStream, *chunks: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The (event name, data) pairs the chunks produce."""
    out = []
    for raw in b"".join(stream.feed(part) for part in chunks).split(b"\n\n"):
        if raw:
            name, data = raw.split(b"\n")
            out.append((name.removeprefix(b"event: ").decode(), orjson.loads(data.removeprefix(b"data: "))))
    return out


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


def test_the_estimate_is_a_quarter_of_the_prompts_bytes() -> None:
    # "be brief" (8) + "user" (4) + "hello there!" (12) = 24 bytes
    assert (
        estimate_input_tokens(request(system="be brief", messages=[{"role": "user", "content": "hello there!"}])) == 6
    )


def test_message_start_carries_the_estimate_and_message_delta_the_count() -> None:
    stream = MessagesStream("m", request(messages=[{"role": "user", "content": "hello there!"}]))
    sent = events(stream, chunk("Hi"), chunk(**DONE))
    assert sent[0][1]["message"]["usage"] == {"input_tokens": 4, "output_tokens": 0}
    assert sent[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"input_tokens": 30, "output_tokens": 4},
    }


def test_thinking_then_text_are_two_blocks() -> None:
    sent = events(MessagesStream("m", request()), chunk(thinking="hmm"), chunk("Hi"), chunk(**DONE))
    assert [(name, data.get("index")) for name, data in sent] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert sent[1][1]["content_block"] == {"type": "thinking", "thinking": ""}
    assert sent[2][1]["delta"] == {"type": "thinking_delta", "thinking": "hmm"}


def test_text_then_a_tool_call_closes_the_text_block_first() -> None:
    sent = events(MessagesStream("m", request()), chunk("Let me look."), chunk(calls=[CALL]), chunk(**DONE))
    assert [name for name, _ in sent[3:7]] == [
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    ]
    assert sent[4][1] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}},
    }
    assert sent[5][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Paris"}'}
    assert sent[-2][1]["delta"] == {"stop_reason": "tool_use"}


def test_a_tool_call_repeated_in_a_later_chunk_is_sent_once() -> None:
    sent = events(MessagesStream("m", request()), chunk(calls=[CALL]), chunk(calls=[CALL], **DONE))
    assert [name for name, _ in sent].count("content_block_start") == 1


def test_a_cut_answer_stops_for_max_tokens() -> None:
    sent = events(MessagesStream("m", request()), chunk("Hi", done_reason="length", eval_count=1))
    assert sent[-2][1]["delta"] == {"stop_reason": "max_tokens"}


def test_a_whole_answer_lists_thinking_text_and_tool_use_in_that_order() -> None:
    native = chunk("Let me look.", thinking="hmm", calls=[CALL], **DONE)
    answer = whole_message("m", native)
    assert [block["type"] for block in answer["content"]] == ["thinking", "text", "tool_use"]
    assert answer["stop_reason"] == "tool_use"
    assert answer["usage"] == {"input_tokens": 30, "output_tokens": 4}
    assert answer["id"].startswith("msg_") and len(answer["id"]) == 28


def test_an_empty_whole_answer_has_null_content_as_from_ollama() -> None:
    assert whole_message("m", chunk(**DONE))["content"] is None


def test_a_broken_stream_ends_with_anthropics_error_event() -> None:
    tail = MessagesStream("m", request()).fail("runner crashed")
    assert tail == (b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"runner crashed"}}\n\n')
