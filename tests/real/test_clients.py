"""The official Python clients, ollama and openai, get from the gateway what they get from the real
Ollama itself: every call is made directly and through the gateway, and the answers compared."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import pytest
from ollama import AsyncClient, Client, ResponseError

from ollama_asgi.testing.real import RealOllama
from tests.conftest import ADMIN_KEY, API_KEY
from tests.real.compare import AUTH, HI, SENTENCE, WEATHER_TOOL, Pair, gateway_url, stable
from tests.support.server import ServerThread


@pytest.fixture(scope="module")
def llm_url(ollama: RealOllama) -> Iterator[str]:
    with gateway_url(ollama) as url:
        yield url


@pytest.fixture
def clients(ollama: RealOllama, llm_url: str) -> Pair:
    return Pair(Client(host=ollama.url), Client(host=llm_url, headers=AUTH))


@pytest.fixture
async def async_clients(ollama: RealOllama, llm_url: str) -> AsyncIterator[Pair]:
    yield Pair(AsyncClient(host=ollama.url), AsyncClient(host=llm_url, headers=AUTH))


@pytest.fixture
def openai_clients(ollama: RealOllama, llm_url: str) -> Pair:
    return Pair(
        openai.OpenAI(base_url=ollama.url + "/v1", api_key="ollama"),
        openai.OpenAI(base_url=llm_url + "/v1", api_key=API_KEY),
    )


def get_weather(city: str) -> str:
    """Current weather in a city.

    Args:
        city: the city's name
    """
    return "sunny"


def error_of(call: Any) -> tuple[int, str]:
    with pytest.raises(ResponseError) as info:
        call()
    return info.value.status_code, info.value.error


# ---------------------------------------------------------------------------------------------- ollama


def test_ollama_chat(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: c.chat(model="tiny", messages=HI))
    assert direct.message.content == SENTENCE
    assert stable(gateway) == stable(direct)


def test_ollama_chat_streamed_chunk_by_chunk(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: list(c.chat(model="tiny", messages=HI, stream=True)))
    assert "".join(c.message.content for c in direct) == SENTENCE
    assert stable(gateway) == stable(direct)


def test_ollama_generate(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: c.generate(model="tiny", prompt="hi"))
    assert direct.response == SENTENCE
    assert direct.context
    assert stable(gateway) == stable(direct)


def test_ollama_generate_streamed_chunk_by_chunk(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: list(c.generate(model="tiny", prompt="hi", stream=True)))
    assert direct[-1].done_reason == "stop"
    assert stable(gateway) == stable(direct)


def test_ollama_options_reach_the_model(clients: Pair) -> None:
    options = {"num_predict": 6, "temperature": 0, "seed": 7, "stop": ["fox"]}
    direct, gateway = clients.each(lambda c: c.chat(model="tiny", messages=HI, options=options))
    assert direct.message.content == "The quick brown "
    assert stable(gateway) == stable(direct)


def test_ollama_num_predict_ends_with_length(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: c.generate(model="tiny", prompt="hi", options={"num_predict": 3}))
    assert (direct.done_reason, direct.eval_count) == ("length", 3)
    assert stable(gateway) == stable(direct)


def test_ollama_embed_gives_equal_vectors(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: c.embed(model="tiny", input=["a", "b"]))
    assert len(direct.embeddings) == 2
    assert gateway.embeddings == direct.embeddings
    assert stable(gateway) == stable(direct)


def test_ollama_embed_is_equal_at_the_context_the_gateway_sizes(
    ollama: RealOllama, gateway_for: Callable[..., ServerThread]
) -> None:
    sized = gateway_for(ollama)  # default buckets: a short input gets a context of its own, not Ollama's 4096
    clients = Pair(Client(host=ollama.url), Client(host=sized.url + "/llm", headers=AUTH))
    direct, gateway = clients.each(lambda c: c.embed(model="tiny", input=["a", "b"]))
    assert ("tiny:latest", 2048) in [(m.model, m.context_length) for m in clients.direct.ps().models]
    assert gateway.embeddings == direct.embeddings


def test_ollama_legacy_embeddings_give_equal_vectors(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: c.embeddings(model="tiny", prompt="a"))
    assert direct.embedding
    assert gateway.embedding == direct.embedding


def test_ollama_tool_call(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: c.chat(model="tools", messages=HI, tools=[WEATHER_TOOL]))
    assert [(t.function.name, t.function.arguments) for t in direct.message.tool_calls or []] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert stable(gateway) == stable(direct)


def test_ollama_tool_given_as_a_python_function(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: c.chat(model="tools", messages=HI, tools=[get_weather]))
    assert direct.message.tool_calls
    assert stable(gateway) == stable(direct)


def test_ollama_two_tool_calls_streamed(clients: Pair) -> None:
    direct, gateway = clients.each(
        lambda c: list(c.chat(model="tools2", messages=HI, tools=[WEATHER_TOOL], stream=True))
    )
    calls = [t.function.arguments for c in direct for t in c.message.tool_calls or []]
    assert calls == [{"city": "Paris"}, {"city": "London"}]
    assert stable(gateway) == stable(direct)


def test_ollama_format_json_schema(clients: Pair) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    options = {"temperature": 0, "num_predict": 20}
    direct, gateway = clients.each(lambda c: c.generate(model="tiny", prompt="hi", format=schema, options=options))
    assert direct.response.startswith("{")
    assert stable(gateway) == stable(direct)


def test_ollama_format_json(clients: Pair) -> None:
    options = {"temperature": 0, "num_predict": 8}
    direct, gateway = clients.each(lambda c: c.chat(model="tiny", messages=HI, format="json", options=options))
    assert direct.message.content.startswith("{")
    assert stable(gateway) == stable(direct)


def test_ollama_think_is_refused_with_the_same_error(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: error_of(lambda: c.chat(model="tiny", messages=HI, think=True)))
    assert direct == (400, '"tiny" does not support thinking')
    assert gateway == direct


def test_ollama_think_on_generate_is_refused_with_the_same_error(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: error_of(lambda: c.generate(model="tiny", prompt="hi", think=True)))
    assert direct[0] == 400
    assert gateway == direct


def test_ollama_unknown_model_is_the_same_404(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: error_of(lambda: c.chat(model="nope", messages=HI)))
    assert direct == (404, "model 'nope' not found")
    assert gateway == direct


def test_ollama_keep_alive_is_accepted_and_the_answer_unchanged(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: c.generate(model="tiny", prompt="hi", keep_alive="10m"))
    assert stable(gateway) == stable(direct)


def test_ollama_unload_by_an_admin_answers_as_ollama(ollama: RealOllama, llm_url: str) -> None:
    admin = Pair(Client(host=ollama.url), Client(host=llm_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}))
    direct, gateway = admin.each(lambda c: c.generate(model="tiny", prompt="", keep_alive=0))
    assert direct.done_reason == "unload"
    assert stable(gateway) == stable(direct)


def test_ollama_admin_creates_copies_and_deletes_models_as_on_ollama(ollama: RealOllama, llm_url: str) -> None:
    def manage(client: Client, name: str) -> list[Any]:
        made = [
            p.status.split(" sha256:")[0] for p in client.create(model=name, from_="tiny", system=name, stream=True)
        ]
        copied = client.copy(name, f"{name}-copy").status
        deleted = [client.delete(n).status for n in (name, f"{name}-copy")]
        return [made, copied, deleted, error_of(lambda: client.delete(name))]

    direct = manage(Client(host=ollama.url), "made-direct")
    gateway = manage(Client(host=llm_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}), "made-through")
    assert direct[0][-2:] == ["writing manifest", "success"]
    assert direct[3] == (404, "model 'made-direct' not found")
    assert gateway[:3] == direct[:3]
    assert gateway[3] == (404, "model 'made-through' not found")


def test_ollama_show(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: c.show("tiny"))
    assert direct.capabilities == ["completion", "tools"]
    assert stable(gateway) == stable(direct)


def test_ollama_list(clients: Pair) -> None:
    direct, gateway = clients.each(lambda c: sorted(stable(c.list().models), key=lambda m: m["model"]))
    assert "tiny:latest" in [m["model"] for m in direct]
    assert gateway == direct


async def test_ollama_async_chat(async_clients: Pair) -> None:
    direct = await async_clients.direct.chat(model="tiny", messages=HI)
    gateway = await async_clients.gateway.chat(model="tiny", messages=HI)
    assert direct.message.content == SENTENCE
    assert stable(gateway) == stable(direct)


async def test_ollama_async_chat_streamed(async_clients: Pair) -> None:
    async def chunks(client: AsyncClient) -> list[Any]:
        return [c async for c in await client.chat(model="tiny", messages=HI, stream=True)]

    direct, gateway = await chunks(async_clients.direct), await chunks(async_clients.gateway)
    assert "".join(c.message.content for c in direct) == SENTENCE
    assert stable(gateway) == stable(direct)


async def test_ollama_async_generate_streamed(async_clients: Pair) -> None:
    async def chunks(client: AsyncClient) -> list[Any]:
        return [c async for c in await client.generate(model="tiny", prompt="hi", stream=True)]

    direct, gateway = await chunks(async_clients.direct), await chunks(async_clients.gateway)
    assert stable(gateway) == stable(direct)


async def test_ollama_async_embed_and_tools(async_clients: Pair) -> None:
    direct = await async_clients.direct.embed(model="tiny", input="a")
    gateway = await async_clients.gateway.embed(model="tiny", input="a")
    assert gateway.embeddings == direct.embeddings
    direct = await async_clients.direct.chat(model="tools", messages=HI, tools=[WEATHER_TOOL])
    gateway = await async_clients.gateway.chat(model="tools", messages=HI, tools=[WEATHER_TOOL])
    assert direct.message.tool_calls
    assert stable(gateway) == stable(direct)


async def test_ollama_async_think_is_refused_with_the_same_error(async_clients: Pair) -> None:
    errors = []
    for client in async_clients:
        with pytest.raises(ResponseError) as info:
            await client.chat(model="tiny", messages=HI, think=True)
        errors.append((info.value.status_code, info.value.error))
    assert errors[1] == errors[0] == (400, '"tiny" does not support thinking')


# ---------------------------------------------------------------------------------------------- openai


def test_openai_chat(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(lambda c: c.chat.completions.create(model="tiny", messages=HI))
    assert direct.choices[0].message.content == SENTENCE
    assert stable(gateway) == stable(direct)


def stream_with_usage(client: openai.OpenAI, **request: Any) -> list[Any]:
    return list(
        client.chat.completions.create(stream=True, stream_options={"include_usage": True}, messages=HI, **request)
    )


def test_openai_chat_stream_text_finish_and_usage(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(lambda c: stream_with_usage(c, model="tiny"))

    def summary(chunks: list[Any]) -> tuple[str, list[str], Any]:
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        return text, finish, stable(chunks[-1].usage)

    text, finish, usage = summary(direct)
    assert (text, finish, usage["completion_tokens"]) == (SENTENCE, ["stop"], 10)
    assert summary(gateway) == summary(direct)
    assert [c.choices == [] for c in gateway] == [c.choices == [] for c in direct]


def newest_shape(chunks: list[Any]) -> list[Any]:
    """Streamed chat chunks as the newest Ollama sends them, which the gateway follows: the role in the
    first delta only, and an empty finish delta. v0.24 repeats the role and ends with content ""."""
    out = stable(chunks)
    for chunk in out[1:]:
        for choice in chunk["choices"]:
            choice["delta"]["role"] = None
            if choice["finish_reason"] and choice["delta"]["content"] == "":
                choice["delta"]["content"] = None
    return out


def test_openai_chat_stream_chunks_are_ollamas(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(lambda c: stream_with_usage(c, model="tiny", max_tokens=3))
    assert len(direct) == 5  # three words, the finish chunk, the usage chunk
    assert stable(gateway) == newest_shape(direct)


def test_openai_chat_logprobs(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(
        lambda c: c.chat.completions.create(model="tiny", messages=HI, logprobs=True, top_logprobs=2, max_tokens=2)
    )
    assert [t.token for t in direct.choices[0].logprobs.content] == ["The", " quick"]
    assert stable(gateway) == stable(direct)


def test_openai_chat_content_parts(openai_clients: Pair) -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    direct, gateway = openai_clients.each(lambda c: c.chat.completions.create(model="tiny", messages=messages))
    assert direct.choices[0].message.content == SENTENCE
    assert stable(gateway) == stable(direct)


def test_openai_chat_content_parts_reach_the_model_as_ollamas_messages(openai_clients: Pair) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}]
    direct, gateway = openai_clients.each(lambda c: c.chat.completions.create(model="tiny", messages=messages))
    assert direct.usage.prompt_tokens == 32  # two user messages, not one of two lines
    assert stable(gateway) == stable(direct)


def test_openai_chat_stop_entries_that_are_not_strings_are_skipped(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(
        lambda c: c.chat.completions.create(model="tiny", messages=HI, extra_body={"stop": ["fox", 1]})
    )
    assert direct.choices[0].message.content == "The quick brown "
    assert stable(gateway) == stable(direct)


def test_openai_chat_sampling_options(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(
        lambda c: c.chat.completions.create(
            model="tiny", messages=HI, stop=["fox"], seed=3, temperature=0, top_p=0.9, max_tokens=6
        )
    )
    assert direct.choices[0].message.content == "The quick brown "
    assert stable(gateway) == stable(direct)


def test_openai_response_format_json_schema(openai_clients: Pair) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    direct, gateway = openai_clients.each(
        lambda c: c.chat.completions.create(
            model="tiny", messages=HI, response_format=response_format, temperature=0, max_tokens=20
        )
    )
    assert direct.choices[0].message.content.startswith("{")
    assert stable(gateway) == stable(direct)


def test_openai_tool_result_sent_back(openai_clients: Pair) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    messages = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    direct, gateway = openai_clients.each(
        lambda c: c.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER_TOOL])
    )
    assert direct.choices[0].message.content == SENTENCE
    assert stable(gateway) == stable(direct)


def test_openai_tool_calls(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(
        lambda c: c.chat.completions.create(model="tools2", messages=HI, tools=[WEATHER_TOOL])
    )
    calls = direct.choices[0].message.tool_calls
    assert [(t.index, t.function.arguments) for t in calls] == [(0, '{"city":"Paris"}'), (1, '{"city":"London"}')]
    assert all(t.id for t in gateway.choices[0].message.tool_calls)
    assert stable(gateway) == stable(direct)


def test_openai_two_tool_calls_streamed_keep_their_index(openai_clients: Pair) -> None:
    def deltas(client: openai.OpenAI) -> list[tuple[int, str | None, str | None]]:
        chunks = stream_with_usage(client, model="tools2", tools=[WEATHER_TOOL])
        return [
            (t.index, t.function.name if t.function else None, t.function.arguments if t.function else None)
            for c in chunks
            if c.choices
            for t in c.choices[0].delta.tool_calls or []
        ]

    direct, gateway = openai_clients.each(deltas)
    assert direct == [(0, "get_weather", '{"city":"Paris"}'), (1, "get_weather", '{"city":"London"}')]
    assert gateway == direct


def test_openai_stream_helper_assembles_two_tool_calls(openai_clients: Pair) -> None:
    def final_calls(client: openai.OpenAI) -> list[tuple[str, str]]:
        with client.chat.completions.stream(model="tools2", messages=HI, tools=[WEATHER_TOOL]) as stream:
            message = stream.get_final_completion().choices[0].message
        return [(t.function.name, t.function.arguments) for t in message.tool_calls or []]

    direct, gateway = openai_clients.each(final_calls)
    assert direct == [("get_weather", '{"city":"Paris"}'), ("get_weather", '{"city":"London"}')]
    assert gateway == direct


def test_openai_tool_call_stream_finishes_with_tool_calls(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(lambda c: stream_with_usage(c, model="tools2", tools=[WEATHER_TOOL]))

    def finish(chunks: list[Any]) -> list[str]:
        return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]

    assert finish(direct) == ["tool_calls"]
    assert finish(gateway) == finish(direct)
    assert stable(gateway[-1].usage) == stable(direct[-1].usage)


async def test_openai_async_chat_stream(ollama: RealOllama, llm_url: str) -> None:
    async def chunks(client: openai.AsyncOpenAI) -> list[Any]:
        stream = await client.chat.completions.create(
            model="tiny", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        return [c async for c in stream]

    direct = await chunks(openai.AsyncOpenAI(base_url=ollama.url + "/v1", api_key="ollama"))
    gateway = await chunks(openai.AsyncOpenAI(base_url=llm_url + "/v1", api_key=API_KEY))
    assert "".join(c.choices[0].delta.content or "" for c in direct if c.choices) == SENTENCE
    assert stable(gateway) == newest_shape(direct)


def test_openai_completions(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(lambda c: c.completions.create(model="tiny", prompt="hi"))
    assert direct.choices[0].text == SENTENCE
    assert stable(gateway) == stable(direct)


def test_openai_completions_streamed(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(lambda c: list(c.completions.create(model="tiny", prompt="hi", stream=True)))
    assert "".join(c.choices[0].text for c in direct) == SENTENCE
    assert stable(gateway) == stable(direct)


def test_openai_completions_streamed_with_usage(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(
        lambda c: list(
            c.completions.create(
                model="tiny", prompt="hi", stream=True, stream_options={"include_usage": True}, max_tokens=2
            )
        )
    )
    assert direct[-1].usage.completion_tokens == 2
    assert stable(gateway) == stable(direct)


def test_openai_embeddings_give_equal_vectors(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(lambda c: c.embeddings.create(model="tiny", input=["a", "b"]))
    assert len(direct.data) == 2
    assert stable(gateway) == stable(direct)


def test_openai_models_list(openai_clients: Pair) -> None:
    direct, gateway = openai_clients.each(lambda c: sorted((m.id, m.owned_by) for m in c.models.list()))
    assert ("tiny:latest", "library") in direct
    assert gateway == direct


def test_openai_unknown_model_is_the_same_not_found(openai_clients: Pair) -> None:
    def error(client: openai.OpenAI) -> tuple[int, Any]:
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="nope", messages=HI)
        return info.value.status_code, info.value.body

    direct, gateway = openai_clients.each(error)
    assert direct[0] == 404
    assert gateway == direct
