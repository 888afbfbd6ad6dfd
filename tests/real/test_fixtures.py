"""The suite's own models, as the real server runs them: fixed answers, real tool calls, counted loads."""

from __future__ import annotations

from typing import Any

from ollama_asgi.testing.real import RealOllama

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def chat(server: RealOllama, model: str, **extra: Any) -> dict[str, Any]:
    status, body = server.request(
        "POST", "/api/chat", {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False, **extra}
    )
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def test_tiny_answers_its_sentence_and_stops(ollama: RealOllama) -> None:
    body = chat(ollama, "tiny")
    assert body["message"]["content"] == "The quick brown fox jumps over the lazy dog."
    assert body["done_reason"] == "stop"


def test_loop_repeats_until_num_predict(ollama: RealOllama) -> None:
    body = chat(ollama, "loop", options={"num_predict": 14})
    assert body["message"]["content"].startswith("one two three four five six seven eight nine ten. one two")
    assert body["done_reason"] == "length"
    assert body["eval_count"] == 14


def test_tools_model_makes_one_real_tool_call(ollama: RealOllama) -> None:
    calls = chat(ollama, "tools", tools=[WEATHER_TOOL])["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert calls[0]["function"]["arguments"] == {"city": "Paris"}
    assert calls[0]["id"]


def test_tools2_model_makes_two_calls_with_a_running_index(ollama: RealOllama) -> None:
    calls = chat(ollama, "tools2", tools=[WEATHER_TOOL])["message"]["tool_calls"]
    assert [c["function"]["arguments"]["city"] for c in calls] == ["Paris", "London"]
    assert [c["function"]["index"] for c in calls] == [0, 1]


def test_each_load_is_one_runner_line_in_the_log(ollama: RealOllama) -> None:
    before = ollama.loads()
    chat(ollama, "tiny", options={"num_ctx": 1536})  # a context no other test uses: a load of its own
    assert ollama.loads() == before + 1
    chat(ollama, "tiny", options={"num_ctx": 1536})
    assert ollama.loads() == before + 1
