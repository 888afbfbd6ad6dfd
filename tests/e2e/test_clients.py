"""The official ollama and openai clients talk through the gateway mounted at /llm in a Starlette
host served by uvicorn, to the emulator over HTTP: content, order and statistics arrive intact."""

from __future__ import annotations

import ollama
import openai
import pytest

from ollama_asgi.testing import EmulatorServer
from tests.conftest import ADMIN, API_KEY, AUTH, login
from tests.support.server import ServerThread

PROMPT = "one two three four five"
EXPECTED = "one two three four five one two three"  # the emulator cycles prompt words for 8 tokens


def test_ollama_client_streams_a_chat_with_an_api_key(llm_url: str) -> None:
    client = ollama.Client(host=llm_url, headers=AUTH)
    chunks = list(client.chat(model="llama3.2", messages=[{"role": "user", "content": PROMPT}], stream=True))
    assert "".join(c.message.content or "" for c in chunks) == EXPECTED
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    final = chunks[-1]
    assert final.done_reason == "stop"
    assert final.eval_count == 8
    assert final.prompt_eval_count and final.total_duration


def test_ollama_client_generate_without_streaming(llm_url: str) -> None:
    client = ollama.Client(host=llm_url, headers=AUTH)
    response = client.generate(model="llama3.2", prompt=PROMPT, stream=False, options={"num_predict": 3})
    assert response.response == "one two three"
    assert response.done_reason == "length"
    assert response.eval_count == 3


def test_streamed_and_unstreamed_answers_agree(llm_url: str) -> None:
    client = ollama.Client(host=llm_url, headers=AUTH)
    streamed = "".join(c.response for c in client.generate(model="qwen2.5:0.5b", prompt=PROMPT, stream=True))
    whole = client.generate(model="qwen2.5:0.5b", prompt=PROMPT, stream=False).response
    assert streamed == whole == EXPECTED


async def test_async_ollama_client_with_the_host_session(host: ServerThread, llm_url: str) -> None:
    cookies = login(host.url, "alice")
    client = ollama.AsyncClient(host=llm_url, cookies=cookies)
    parts = []
    async for chunk in await client.chat(model="llama3.2", messages=[{"role": "user", "content": PROMPT}], stream=True):
        parts.append(chunk.message.content or "")
    assert "".join(parts) == EXPECTED
    response = await client.chat(model="llama3.2", messages=[{"role": "user", "content": PROMPT}])
    assert response.message.content == EXPECTED


def test_ollama_client_lists_shows_and_embeds(llm_url: str) -> None:
    client = ollama.Client(host=llm_url, headers=AUTH)
    names = {m.model for m in client.list().models}
    assert {"llama3.2:latest", "nomic-embed-text:latest"} <= names
    assert "completion" in (client.show("llama3.2").capabilities or [])
    embedded = client.embed(model="nomic-embed-text", input=["a", "b"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 768
    client.generate(model="llama3.2", prompt="warm")
    assert "llama3.2:latest" in {m.model for m in client.ps().models}


def test_ollama_client_errors_keep_their_status(llm_url: str) -> None:
    client = ollama.Client(host=llm_url, headers=AUTH)
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404
    assert "not found" in info.value.error


def test_openai_client_streams_chat_with_usage(llm_url: str) -> None:
    client = openai.OpenAI(base_url=llm_url + "/v1", api_key=API_KEY)
    stream = client.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == EXPECTED
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]


def test_openai_client_chat_embeddings_and_models(llm_url: str) -> None:
    client = openai.OpenAI(base_url=llm_url + "/v1", api_key=API_KEY)
    completion = client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": PROMPT}])
    assert completion.choices[0].message.content == EXPECTED
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    vectors = client.embeddings.create(model="nomic-embed-text", input=["x", "y", "z"])
    assert [len(d.embedding) for d in vectors.data] == [768, 768, 768]
    assert "llama3.2:latest" in {m.id for m in client.models.list()}
    assert client.models.retrieve("llama3.2:latest").id == "llama3.2:latest"


def test_openai_client_sees_openai_shaped_errors(llm_url: str) -> None:
    client = openai.OpenAI(base_url=llm_url + "/v1", api_key="wrong-key-123")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    client = openai.OpenAI(base_url=llm_url + "/v1", api_key=API_KEY)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="../etc", messages=[{"role": "user", "content": "x"}])
    assert "invalid model name" in info.value.message


def test_anonymous_callers_get_401(llm_url: str) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=llm_url).list()
    assert info.value.status_code == 401


def test_management_endpoints_are_for_admins_only(host: ServerThread, llm_url: str, emulator: EmulatorServer) -> None:
    for client in (
        ollama.Client(host=llm_url, headers=AUTH),
        ollama.Client(host=llm_url, cookies=login(host.url, "alice")),
    ):
        with pytest.raises(ollama.ResponseError) as info:
            client.pull("qwen2.5:0.5b")
        assert info.value.status_code == 403
        with pytest.raises(ollama.ResponseError) as info:
            client.delete("llama3.2")
        assert info.value.status_code == 403
    assert not [r for r in emulator.emulator.requests if r.path in ("/api/pull", "/api/delete")]

    admin = ollama.Client(host=llm_url, headers=ADMIN)
    statuses = [p.status for p in admin.pull("qwen2.5:0.5b", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    admin.copy("llama3.2", "llama3.2-copy")
    admin.delete("llama3.2-copy")
    staff = ollama.Client(host=llm_url, cookies=login(host.url, "root"))
    assert staff.pull("qwen2.5:0.5b", stream=False).status == "success"


def test_root_answers_like_ollama_without_auth(llm_url: str) -> None:
    import httpx

    response = httpx.get(llm_url + "/")
    assert response.status_code == 200 and response.text == "Ollama is running"
    assert httpx.head(llm_url + "/").status_code == 200
