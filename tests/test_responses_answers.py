"""Native chunks back as Responses API answers and events, as Ollama's /v1/responses writes them."""

from __future__ import annotations

from typing import Any

import orjson

from ollama_asgi.responses_answers import ResponsesStream, whole_response
from tests.support.native_chunks import CALL, DONE, chunk


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "input": "hi", **fields}


def events_of(raw: bytes) -> list[tuple[str, bytes]]:
    """The (event name, raw data) pairs of an SSE body."""
    pairs = [block.split(b"\n") for block in raw.split(b"\n\n") if block]
    return [(name.removeprefix(b"event: ").decode(), data.removeprefix(b"data: ")) for name, data in pairs]


def events(stream: ResponsesStream, *chunks: dict[str, Any]) -> list[tuple[str, bytes]]:
    return events_of(b"".join(stream.feed(part) for part in chunks))


def test_a_whole_answer_with_thinking_and_calls_names_its_items_after_the_response() -> None:
    answer = whole_response("m", request(), chunk("ignored", thinking="hmm", calls=[CALL, CALL], **DONE))
    rid = answer["id"]
    assert [item["id"] for item in answer["output"]] == [f"rs_{rid}", f"fc_{rid}_0", f"fc_{rid}_1"]
    assert answer["output"][1]["arguments"] == '{"city":"Paris"}'
    assert answer["usage"]["total_tokens"] == 34


def test_a_whole_answer_echoes_the_requests_settings() -> None:
    answer = whole_response("m", request(instructions="be brief", temperature=0.5, max_output_tokens=9), chunk(**DONE))
    settings = {k: answer[k] for k in ("instructions", "temperature", "top_p", "max_output_tokens", "reasoning")}
    assert settings == {
        "instructions": "be brief",
        "temperature": 0.5,
        "top_p": 1,
        "max_output_tokens": 9,
        "reasoning": None,
    }


def test_reasoning_then_text_are_two_items_numbered_in_order() -> None:
    sent = events(ResponsesStream("m", request()), chunk(thinking="hmm"), chunk("Hi"), chunk(**DONE))
    names = [name for name, _ in sent]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    data = [orjson.loads(raw) for _, raw in sent]
    assert [d["sequence_number"] for d in data] == list(range(len(sent)))
    assert [d["output_index"] for d in data if d["type"] == "response.output_item.added"] == [0, 1]
    assert [item["type"] for item in data[-1]["response"]["output"]] == ["reasoning", "message"]


def test_stream_events_are_written_with_sorted_keys_as_go_writes_maps() -> None:
    _, raw = events(ResponsesStream("m", request()), chunk("Hi"))[-1]
    assert raw.startswith(b'{"content_index":0,"delta":"Hi","item_id":"msg_')


def test_text_after_a_tool_call_is_not_sent() -> None:
    sent = events(ResponsesStream("m", request()), chunk(calls=[CALL]), chunk("trailing words", **DONE))
    assert "response.output_text.delta" not in [name for name, _ in sent]
    completed = orjson.loads(sent[-1][1])["response"]
    assert [item["type"] for item in completed["output"]] == ["function_call"]


def test_a_broken_stream_ends_with_response_failed_and_the_error() -> None:
    stream = ResponsesStream("m", request())
    stream.feed(chunk("Hi"))
    name, raw = events_of(stream.fail("runner crashed"))[-1]
    failed = orjson.loads(raw)["response"]
    assert name == "response.failed"
    assert (failed["status"], failed["error"]) == ("failed", {"code": "server_error", "message": "runner crashed"})
