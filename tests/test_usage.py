"""Token counts read from Ollama's final chunk by byte search (no JSON parse)."""

from __future__ import annotations

import orjson
import pytest

from ollama_asgi.usage import usage_from


def test_native_final_chunk() -> None:
    final = orjson.dumps(
        {"model": "m", "done": True, "prompt_eval_count": 15, "prompt_eval_duration": 9, "eval_count": 3}
    )
    assert usage_from(final) == (15, 3)
    assert usage_from(final).total == 18


def test_embeddings_carry_only_the_prompt_count() -> None:
    assert usage_from(orjson.dumps({"model": "m", "embeddings": [[0.1]], "prompt_eval_count": 4})) == (4, 0)


def test_names_inside_strings_and_tool_arguments_do_not_count() -> None:
    final = orjson.dumps(
        {
            "message": {
                "content": '"eval_count": 99, "prompt_eval_count": 98, "usage": {"prompt_tokens": 97}',
                "tool_calls": [{"function": {"name": "f", "arguments": {"eval_count": 7, "prompt_eval_count": 6}}}],
            },
            "done": True,
            "prompt_eval_count": 21,
            "eval_count": 5,
        }
    )
    assert usage_from(final) == (21, 5)


def test_openai_usage_event_and_body() -> None:
    event = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13}}'
    assert usage_from(event) == (11, 2)
    body = orjson.dumps(
        {
            "choices": [{"message": {"content": '"usage": {"prompt_tokens": 1}', "tool_calls": []}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 40, "total_tokens": 70},
        }
    )
    assert usage_from(body) == (30, 40)


@pytest.mark.parametrize(
    "final",
    [None, b"", b'{"error":"model not found"}', b"not json", b'{"eval_count":true}', b'{"eval_count":-4}'],
)
def test_anything_else_counts_nothing(final: bytes | None) -> None:
    assert usage_from(final) == (0, 0)


def test_spaces_after_the_colon_are_read() -> None:
    assert usage_from(b'{"done": true, "prompt_eval_count": 12, "eval_count": 8}') == (12, 8)
