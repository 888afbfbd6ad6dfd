"""The native inference API: /api/generate, /api/chat, /api/embed, /api/embeddings."""

from __future__ import annotations

import math
import re

import httpx
import ollama
import orjson
import pytest

from ollama_asgi.testing import EmulatorServer

from .conftest import Serve, ndjson

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
METRICS = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]


# ----------------------------------------------------------------------------- generate


def test_generate_streams_ndjson_by_default(client: httpx.Client) -> None:
    response = client.post("/api/generate", json={"model": "llama3.2", "prompt": "hello there"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert "cache-control" not in response.headers
    assert "x-accel-buffering" not in response.headers
    chunks = ndjson(response)
    assert [c["done"] for c in chunks] == [False] * 8 + [True]
    assert list(chunks[0]) == ["model", "created_at", "response", "done"]


def test_generate_reply_echoes_the_prompt_words(client: httpx.Client) -> None:
    chunks = ndjson(client.post("/api/generate", json={"model": "llama3.2", "prompt": "a b c"}))
    text = "".join(c["response"] for c in chunks)
    assert text == "a b c a b c a b"


def test_generate_final_chunk_has_reason_context_and_metrics_in_order(client: httpx.Client) -> None:
    final = ndjson(client.post("/api/generate", json={"model": "llama3.2", "prompt": "hi"}))[-1]
    assert list(final) == ["model", "created_at", "response", "done", "done_reason", "context", *METRICS]
    assert final["response"] == ""
    assert final["done_reason"] == "stop"
    assert final["eval_count"] == 8
    assert final["prompt_eval_count"] == 1 + 10
    assert all(isinstance(final[key], int) and final[key] > 0 for key in METRICS)
    assert final["total_duration"] >= final["load_duration"]


def test_created_at_is_rfc3339_utc(client: httpx.Client) -> None:
    for chunk in ndjson(client.post("/api/generate", json={"model": "llama3.2", "prompt": "hi"})):
        assert RFC3339.fullmatch(chunk["created_at"])


def test_num_predict_sets_the_length_and_reason(client: httpx.Client) -> None:
    final = ndjson(
        client.post("/api/generate", json={"model": "llama3.2", "prompt": "x", "options": {"num_predict": 3}})
    )[-1]
    assert (final["eval_count"], final["done_reason"]) == (3, "length")


def test_model_field_echoes_the_request_and_lookup_ignores_case(client: httpx.Client) -> None:
    chunks = ndjson(client.post("/api/generate", json={"model": "LLaMA3.2", "prompt": "x"}))
    assert {c["model"] for c in chunks} == {"LLaMA3.2"}


def test_generate_without_streaming_is_one_json_object(client: httpx.Client) -> None:
    response = client.post("/api/generate", json={"model": "llama3.2", "prompt": "one two", "stream": False})
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["response"] == "one two one two one two one two"
    assert body["done"] is True
    assert "context" in body


def test_raw_generate_has_no_context(client: httpx.Client) -> None:
    body = client.post("/api/generate", json={"model": "llama3.2", "prompt": "x", "raw": True, "stream": False}).json()
    assert "context" not in body
    assert body["prompt_eval_count"] == 1


def test_blank_prompt_replies_ok(client: httpx.Client) -> None:
    body = client.post(
        "/api/generate", json={"model": "llama3.2", "prompt": "   ", "stream": False, "options": {"num_predict": 2}}
    ).json()
    assert body["response"] == "ok ok"


def test_custom_reply_function_replaces_the_echo(server: EmulatorServer, client: httpx.Client) -> None:
    server.emulator.reply = lambda model, prompt: [f"{model} ", "says ", prompt.upper()]
    body = client.post("/api/generate", json={"model": "llama3.2", "prompt": "hi", "stream": False}).json()
    assert body["response"] == "llama3.2:latest says HI"
    assert body["done_reason"] == "stop"


def test_stop_sequence_ends_the_reply(client: httpx.Client) -> None:
    body = client.post(
        "/api/generate",
        json={"model": "llama3.2", "prompt": "a b c", "stream": False, "options": {"stop": ["c"]}},
    ).json()
    assert body["response"] == "a b "
    assert body["done_reason"] == "stop"


def test_json_format_returns_a_json_document(client: httpx.Client) -> None:
    body = client.post(
        "/api/generate", json={"model": "llama3.2", "prompt": "x", "format": "json", "stream": False}
    ).json()
    assert isinstance(orjson.loads(body["response"]), dict)


def test_schema_format_fills_the_schema(client: httpx.Client) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}, "name": {"type": "string"}}}
    body = client.post(
        "/api/chat",
        json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "format": schema, "stream": False},
    ).json()
    document = orjson.loads(body["message"]["content"])
    assert isinstance(document["age"], int) and isinstance(document["name"], str)


def test_empty_prompt_loads_the_model(server: EmulatorServer, client: httpx.Client) -> None:
    response = client.post("/api/generate", json={"model": "llama3.2"})
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == {
        "model": "llama3.2",
        "created_at": response.json()["created_at"],
        "response": "",
        "done": True,
        "done_reason": "load",
    }
    assert "llama3.2:latest" in server.emulator.loaded_models()
    assert server.emulator.stats.loads == 1


def test_empty_prompt_with_keep_alive_zero_unloads(server: EmulatorServer, client: httpx.Client) -> None:
    client.post("/api/generate", json={"model": "llama3.2"})
    body = client.post("/api/generate", json={"model": "llama3.2", "keep_alive": 0}).json()
    assert body["done_reason"] == "unload"
    assert server.emulator.loaded_models() == {}
    assert server.emulator.stats.unloads == 1


def test_unloading_a_model_that_is_not_loaded_still_answers_unload(client: httpx.Client) -> None:
    body = client.post("/api/generate", json={"model": "qwen2.5:0.5b", "keep_alive": 0}).json()
    assert body["done_reason"] == "unload"


def test_unknown_model_is_404(client: httpx.Client) -> None:
    response = client.post("/api/generate", json={"model": "nope", "prompt": "x"})
    assert response.status_code == 404
    assert response.json() == {"error": "model 'nope' not found"}


@pytest.mark.parametrize(
    ("keep_alive", "message"),
    [
        ("3600", 'time: missing unit in duration "3600"'),
        ("-1", 'time: missing unit in duration "-1"'),
        (True, "Unsupported type: 'bool'"),
    ],
)
def test_bad_keep_alive_is_400(client: httpx.Client, keep_alive: object, message: str) -> None:
    response = client.post("/api/generate", json={"model": "llama3.2", "prompt": "x", "keep_alive": keep_alive})
    assert response.status_code == 400
    assert response.json() == {"error": message}


def test_missing_body_is_400(client: httpx.Client) -> None:
    response = client.post("/api/generate")
    assert (response.status_code, response.json()) == (400, {"error": "missing request body"})


def test_malformed_body_is_400_with_go_text(client: httpx.Client) -> None:
    response = client.post("/api/generate", content=b"{oops")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid character 'o' looking for beginning of object key string"


def test_wrong_option_type_is_500(client: httpx.Client) -> None:
    response = client.post("/api/generate", json={"model": "llama3.2", "prompt": "x", "options": {"num_ctx": "8k"}})
    assert response.status_code == 500
    assert response.json() == {"error": 'option "num_ctx" must be of type integer'}


def test_raw_with_system_is_rejected(client: httpx.Client) -> None:
    response = client.post("/api/generate", json={"model": "llama3.2", "prompt": "x", "raw": True, "system": "s"})
    assert response.json() == {"error": "raw mode does not support template, system, or context"}


def test_embedding_model_cannot_generate(client: httpx.Client) -> None:
    response = client.post("/api/generate", json={"model": "all-minilm", "prompt": "x"})
    assert (response.status_code, response.json()) == (400, {"error": '"all-minilm" does not support generate'})


def test_think_on_a_model_without_thinking_is_400(client: httpx.Client) -> None:
    response = client.post("/api/generate", json={"model": "llama3.2", "prompt": "x", "think": True})
    assert response.json() == {"error": '"llama3.2" does not support thinking'}


def test_thinking_model_streams_thinking_before_content(client: httpx.Client) -> None:
    chunks = ndjson(client.post("/api/generate", json={"model": "qwen3:0.6b", "prompt": "x"}))
    thinking = [c for c in chunks if c.get("thinking")]
    assert thinking and chunks.index(thinking[-1]) < next(i for i, c in enumerate(chunks) if c["response"])


# ----------------------------------------------------------------------------- chat


def test_chat_streams_assistant_messages(client: httpx.Client) -> None:
    chunks = ndjson(
        client.post("/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": "yo"}]})
    )
    assert chunks[0]["message"] == {"role": "assistant", "content": "yo "}
    final = chunks[-1]
    assert list(final) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert final["message"] == {"role": "assistant", "content": ""}
    assert "context" not in final


def test_chat_replies_to_the_last_user_message(client: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second one"},
    ]
    body = client.post(
        "/api/chat", json={"model": "llama3.2", "messages": messages, "stream": False, "options": {"num_predict": 2}}
    ).json()
    assert body["message"]["content"] == "second one"
    assert body["prompt_eval_count"] == 6 + 10


def test_chat_with_no_messages_loads_and_with_keep_alive_zero_unloads(client: httpx.Client) -> None:
    loaded = client.post("/api/chat", json={"model": "llama3.2", "messages": []}).json()
    assert list(loaded) == ["model", "created_at", "message", "done", "done_reason"]
    assert (loaded["message"], loaded["done_reason"]) == ({"role": "assistant", "content": ""}, "load")
    unloaded = client.post("/api/chat", json={"model": "llama3.2", "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload"


def test_chat_empty_model_is_400(client: httpx.Client) -> None:
    response = client.post("/api/chat", json={"model": "", "messages": []})
    assert (response.status_code, response.json()) == (400, {"error": "model is required"})


def test_chat_tool_call_has_object_arguments(client: httpx.Client) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    body = client.post(
        "/api/chat",
        json={
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "Paris: call get_weather"}],
            "tools": [tool],
            "stream": False,
        },
    ).json()
    calls = body["message"]["tool_calls"]
    assert [c["function"] for c in calls] == [{"index": 0, "name": "get_weather", "arguments": {"city": "Paris:"}}]
    assert calls[0]["id"].startswith("call_")
    assert body["message"]["content"] == ""


def test_tools_on_a_model_without_tools_are_rejected(client: httpx.Client) -> None:
    response = client.post(
        "/api/chat",
        json={"model": "llava:7b", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
    )
    assert response.status_code == 400
    assert response.json() == {"error": "registry.ollama.ai/library/llava:7b does not support tools"}


def test_long_history_is_truncated_silently_to_num_ctx(client: httpx.Client) -> None:
    messages = [{"role": "user", "content": "word " * 50} for _ in range(5)]
    body = client.post(
        "/api/chat",
        json={"model": "llama3.2", "messages": messages, "stream": False, "options": {"num_ctx": 120}},
    ).json()
    assert body["prompt_eval_count"] <= 120


# ----------------------------------------------------------------------------- official client


def test_official_client_streams_generate(server: EmulatorServer) -> None:
    parts = list(ollama.Client(host=server.url).generate(model="llama3.2", prompt="x y", stream=True))
    assert "".join(p.response or "" for p in parts) == "x y x y x y x y"
    assert parts[-1].done_reason == "stop"


def test_official_client_chat(server: EmulatorServer) -> None:
    reply = ollama.Client(host=server.url).chat(model="llama3.2", messages=[{"role": "user", "content": "hey"}])
    assert (reply.message.content or "").startswith("hey hey")
    assert reply.eval_count == 8


async def test_official_async_client_streams_chat(server: EmulatorServer) -> None:
    client = ollama.AsyncClient(host=server.url)
    stream = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "a"}], stream=True)
    contents = [part.message.content or "" async for part in stream]
    assert "".join(contents) == "a a a a a a a a"


def test_official_client_raises_the_error_text(server: EmulatorServer) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=server.url).generate(model="missing", prompt="x")
    assert caught.value.status_code == 404
    assert caught.value.error == "model 'missing' not found"


# ----------------------------------------------------------------------------- embeddings


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


def test_embed_returns_normalised_vectors_of_the_model_dimension(client: httpx.Client) -> None:
    body = client.post("/api/embed", json={"model": "all-minilm", "input": ["a", "b"]}).json()
    assert list(body) == ["model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"]
    assert [len(v) for v in body["embeddings"]] == [384, 384]
    assert all(abs(_norm(v) - 1) < 1e-6 for v in body["embeddings"])
    assert body["prompt_eval_count"] == 2


def test_embeddings_are_deterministic_per_text(client: httpx.Client) -> None:
    first = client.post("/api/embed", json={"model": "nomic-embed-text", "input": "same"}).json()["embeddings"][0]
    again = client.post("/api/embed", json={"model": "nomic-embed-text", "input": "same"}).json()["embeddings"][0]
    other = client.post("/api/embed", json={"model": "nomic-embed-text", "input": "else"}).json()["embeddings"][0]
    assert first == again != other


def test_embed_dimensions_truncates_and_renormalises(client: httpx.Client) -> None:
    vector = client.post("/api/embed", json={"model": "all-minilm", "input": "a", "dimensions": 8}).json()
    assert len(vector["embeddings"][0]) == 8
    assert abs(_norm(vector["embeddings"][0]) - 1) < 1e-6


def test_embed_without_input_loads_the_model(server: EmulatorServer, client: httpx.Client) -> None:
    assert client.post("/api/embed", json={"model": "all-minilm"}).json() == {"model": "all-minilm", "embeddings": []}
    assert "all-minilm:latest" in server.emulator.loaded_models()


def test_embed_rejects_non_string_input(client: httpx.Client) -> None:
    response = client.post("/api/embed", json={"model": "all-minilm", "input": ["a", 1]})
    assert (response.status_code, response.json()) == (400, {"error": "invalid input type"})


def test_embed_unknown_model_is_404_with_pull_hint(client: httpx.Client) -> None:
    response = client.post("/api/embed", json={"model": "nope", "input": "a"})
    assert (response.status_code, response.json()) == (404, {"error": 'model "nope" not found, try pulling it first'})


def test_embed_without_truncation_rejects_long_input(client: httpx.Client) -> None:
    response = client.post("/api/embed", json={"model": "all-minilm", "input": "w " * 600, "truncate": False})
    assert (response.status_code, response.json()) == (400, {"error": "the input length exceeds the context length"})


def test_legacy_embeddings_are_not_normalised(client: httpx.Client) -> None:
    body = client.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": "hello"}).json()
    assert list(body) == ["embedding"]
    assert len(body["embedding"]) == 768
    assert abs(_norm(body["embedding"]) - 1) > 0.01


def test_legacy_embeddings_with_empty_prompt_load(client: httpx.Client) -> None:
    assert client.post("/api/embeddings", json={"model": "nomic-embed-text"}).json() == {"embedding": []}


def test_official_client_embed(serve: Serve) -> None:
    server = serve()
    result = ollama.Client(host=server.url).embed(model="all-minilm", input="hi")
    assert len(result.embeddings[0]) == 384
