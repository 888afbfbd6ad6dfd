"""Native chunks back as Anthropic Messages answers and events, with the token estimate of
message_start, as Ollama's /v1/messages writes them."""

from __future__ import annotations

from typing import Any

import orjson

from ollama_asgi.anthropic_answers import MessagesStream, estimate_input_tokens, whole_message
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
