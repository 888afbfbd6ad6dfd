"""Native answers in OpenAI's shape, as Ollama's own ``/v1`` layer writes them."""

from __future__ import annotations

from typing import Any

import orjson

from ollama_asgi.openai_answers import ChatStream, CompletionStream, embeddings_response, whole_response

LOGPROBS = [
    {"token": "The", "logprob": -0.1, "bytes": [84, 104, 101], "top_logprobs": [{"token": "The", "logprob": -0.1}]}
]


def call(call_id: str, index: int, city: str) -> dict[str, Any]:
    return {"id": call_id, "function": {"index": index, "name": "get_weather", "arguments": {"city": city}}}


def chat_chunk(**message: Any) -> dict[str, Any]:
    return {"model": "m", "message": {"role": "assistant", "content": "", **message}, "done": False}


FINAL = {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"}


def events(stream: bytes) -> list[Any]:
    return [orjson.loads(line[6:]) for line in stream.split(b"\n\n") if line.startswith(b"data: {")]


# ------------------------------------------------------------------------------------- tool calls


def test_streamed_calls_keep_ollamas_ids_and_running_index() -> None:
    stream = ChatStream("m", include_usage=False)
    out = stream.feed(chat_chunk(tool_calls=[call("call_a", 0, "Paris")]))
    out += stream.feed(chat_chunk(tool_calls=[call("call_b", 1, "London")]))
    out += stream.feed(FINAL)
    calls = [c for e in events(out) for c in e["choices"][0]["delta"].get("tool_calls", [])]
    assert [(c["id"], c["index"], c["function"]["arguments"]) for c in calls] == [
        ("call_a", 0, '{"city":"Paris"}'),
        ("call_b", 1, '{"city":"London"}'),
    ]


def test_calls_without_an_index_are_counted_across_chunks() -> None:
    stream = ChatStream("m", include_usage=False)
    bare = [{"function": {"name": "get_weather", "arguments": {}}}]
    out = stream.feed(chat_chunk(tool_calls=bare)) + stream.feed(chat_chunk(tool_calls=bare))
    calls = [c for e in events(out) for c in e["choices"][0]["delta"]["tool_calls"]]
    assert [c["index"] for c in calls] == [0, 1]
    assert all(c["id"].startswith("call_") for c in calls)


def test_whole_answer_keeps_ollamas_ids_and_indexes() -> None:
    native = {
        **FINAL,
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [call("call_a", 0, "Paris"), call("call_b", 1, "London")],
        },
    }
    answer = whole_response("openai_chat", "m", native)
    calls = answer["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["index"]) for c in calls] == [("call_a", 0), ("call_b", 1)]
    assert answer["choices"][0]["finish_reason"] == "tool_calls"


# ------------------------------------------------------------------------------------ stream deltas


def test_a_streamed_call_keeps_the_empty_content_beside_it() -> None:
    out = ChatStream("m", include_usage=False).feed(chat_chunk(tool_calls=[call("call_a", 0, "Paris")]))
    assert list(events(out)[0]["choices"][0]["delta"]) == ["role", "content", "tool_calls"]


def test_a_chunk_with_reasoning_and_content_is_split_reasoning_first() -> None:
    stream = ChatStream("m", include_usage=False)
    out = stream.feed({**chat_chunk(content="Hi", thinking="hmm"), "logprobs": LOGPROBS})
    choices = [e["choices"][0] for e in events(out)]
    assert [c["delta"] for c in choices] == [{"role": "assistant", "reasoning": "hmm"}, {"content": "Hi"}]
    assert [c.get("logprobs") for c in choices] == [{"content": LOGPROBS}, None]


# --------------------------------------------------------------------------------------- logprobs


def test_whole_chat_answer_carries_ollamas_logprobs() -> None:
    answer = whole_response(
        "openai_chat", "m", {**FINAL, "message": {"role": "assistant", "content": "The"}, "logprobs": LOGPROBS}
    )
    choice = answer["choices"][0]
    assert choice["logprobs"] == {"content": LOGPROBS}
    assert list(choice) == ["index", "message", "finish_reason", "logprobs"]


def test_each_streamed_chunk_carries_its_tokens_logprobs() -> None:
    stream = ChatStream("m", include_usage=False)
    out = stream.feed({**chat_chunk(content="The"), "logprobs": LOGPROBS}) + stream.feed(FINAL)
    choices = [e["choices"][0] for e in events(out)]
    assert [c.get("logprobs") for c in choices] == [{"content": LOGPROBS}, None]


# ------------------------------------------------------------------------------------ embeddings


def test_the_encoding_format_is_read_in_any_case() -> None:
    answer = embeddings_response("m", {"embeddings": [[1.0]]}, "BASE64")
    assert answer["data"][0]["embedding"] == "AACAPw=="


# ------------------------------------------------------------------------------------ completions


def test_a_completion_that_only_loaded_finishes_with_load() -> None:
    answer = whole_response("openai_completions", "m", {"response": "", "done": True, "done_reason": "load"})
    assert answer["choices"][0]["finish_reason"] == "load"


def test_completion_chunks_carry_zero_usage_until_the_usage_chunk() -> None:
    stream = CompletionStream("m", include_usage=True)
    out = stream.feed({"response": "The", "done": False})
    out += stream.feed({"response": "", "done": True, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 1})
    usages = [e["usage"] for e in events(out)]
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert usages == [zero, zero, {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}]


def test_completion_chunks_put_choices_before_the_model() -> None:
    stream = CompletionStream("m", include_usage=True)
    out = stream.feed({"response": "", "done": True, "done_reason": "stop"})
    fields = ["id", "object", "created", "choices", "model", "system_fingerprint", "usage"]
    assert [list(e) for e in events(out)] == [fields, fields]


def test_completion_chunks_without_include_usage_have_no_usage() -> None:
    out = CompletionStream("m", include_usage=False).feed({"response": "The", "done": False})
    assert "usage" not in events(out)[0]
