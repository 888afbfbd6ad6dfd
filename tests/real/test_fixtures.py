"""The suite's own models, as the real server runs them: fixed answers, real tool calls, counted loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from ollama_asgi.testing.real import RealOllama
from tests.support.rawhttp import wait_until

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


def test_a_server_whose_starter_is_killed_takes_its_runners_with_it(ollama_binary: str) -> None:
    """A test run killed on timeout leaves no ``ollama serve`` and no runner behind."""
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from ollama_asgi.testing.real import RealOllama\n"
            "server = RealOllama(sys.argv[1]).start()\n"
            "server.create(['tiny'])\n"
            "server.request('POST', '/api/generate', {'model': 'tiny', 'prompt': 'x', 'stream': False})\n"
            "print(server.log_path.parent, flush=True)\n"
            "time.sleep(300)\n",
            ollama_binary,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert starter.stdout is not None
        state = starter.stdout.readline().strip()
        assert state and _processes_using(state), "the server and its runner were running"
    finally:
        starter.kill()
        starter.wait(10)
    wait_until(lambda: not _processes_using(state), timeout=10)


def _processes_using(state: str) -> list[str]:
    """Command lines that name the server's state directory (its runners name their model file there)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ollama" in command and state in command and "python" not in command:
            found.append(command)
    return found
