"""LangChain, LlamaIndex and LiteLLM, pointed at the gateway with an API key, get what they get from
the real Ollama itself: every call is made directly and through the gateway, and the answers compared.

How each passes the key: LangChain's ``client_kwargs={"headers": ...}``; LlamaIndex's LLM
``headers=...`` and its embedding ``client_kwargs={"headers": ...}``; LiteLLM's ``api_key=...``
(sent as ``Authorization: Bearer``) for ``ollama_chat/`` and ``ollama/`` completions. LiteLLM's
``ollama/`` embeddings send no header at all, so they go through the gateway's ``/v1`` as
``openai/`` models instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from langchain_ollama import ChatOllama, OllamaEmbeddings
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool
from llama_index.embeddings.ollama import OllamaEmbedding
from llama_index.llms.ollama import Ollama
from pydantic import BaseModel

from ollama_asgi.testing.real import RealOllama
from tests.conftest import API_KEY
from tests.real.compare import AUTH, HI, SENTENCE, WEATHER_TOOL, Pair, gateway_url, stable

# LiteLLM's own types warn when it first loads its Ollama provider.
pytestmark = pytest.mark.filterwarnings("ignore:Items? .* using the `ReadOnly` qualifier:UserWarning")

WORDS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog."]


@pytest.fixture(scope="module")
def llm_url(ollama: RealOllama) -> Iterator[str]:
    with gateway_url(ollama) as url:
        yield url


def get_weather(city: str) -> str:
    """Current weather in a city."""
    return "sunny"


# ------------------------------------------------------------------------------------------- LangChain


@pytest.fixture
def chat_models(ollama: RealOllama, llm_url: str) -> Pair:
    return Pair(
        ChatOllama(model="tiny", base_url=ollama.url),
        ChatOllama(model="tiny", base_url=llm_url, client_kwargs={"headers": AUTH}),
    )


def test_langchain_chat_invoke(chat_models: Pair) -> None:
    direct, gateway = chat_models.each(lambda m: m.invoke("hi"))
    assert direct.content == SENTENCE
    assert direct.usage_metadata == {"input_tokens": 25, "output_tokens": 10, "total_tokens": 35}
    assert stable(gateway) == stable(direct)


def test_langchain_chat_stream(chat_models: Pair) -> None:
    direct, gateway = chat_models.each(lambda m: list(m.stream("hi")))
    assert [c.content for c in direct if c.content] == WORDS
    assert stable(gateway) == stable(direct)


def test_langchain_bind_tools(ollama: RealOllama, llm_url: str) -> None:
    models = Pair(
        ChatOllama(model="tools2", base_url=ollama.url),
        ChatOllama(model="tools2", base_url=llm_url, client_kwargs={"headers": AUTH}),
    )
    direct, gateway = models.each(lambda m: m.bind_tools([WEATHER_TOOL]).invoke("hi"))
    calls = [(c["name"], c["args"]) for c in direct.tool_calls]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "London"})]
    assert stable(gateway) == stable(direct)


class Answer(BaseModel):
    a: int


def test_langchain_structured_output(ollama: RealOllama, llm_url: str) -> None:
    models = Pair(
        ChatOllama(model="tiny", base_url=ollama.url, temperature=0, num_predict=20),
        ChatOllama(model="tiny", base_url=llm_url, client_kwargs={"headers": AUTH}, temperature=0, num_predict=20),
    )
    direct, gateway = models.each(lambda m: m.with_structured_output(Answer, include_raw=True).invoke("hi"))
    assert direct["raw"].content.startswith("{")
    assert stable(gateway["raw"]) == stable(direct["raw"])


async def test_langchain_async_invoke_and_stream(chat_models: Pair) -> None:
    direct = [await chat_models.direct.ainvoke("hi"), [c async for c in chat_models.direct.astream("hi")]]
    gateway = [await chat_models.gateway.ainvoke("hi"), [c async for c in chat_models.gateway.astream("hi")]]
    assert direct[0].content == SENTENCE
    assert stable(gateway) == stable(direct)


def test_langchain_embeddings_give_equal_vectors(ollama: RealOllama, llm_url: str) -> None:
    embedders = Pair(
        OllamaEmbeddings(model="tiny", base_url=ollama.url),
        OllamaEmbeddings(model="tiny", base_url=llm_url, client_kwargs={"headers": AUTH}),
    )
    direct, gateway = embedders.each(lambda e: e.embed_documents(["a", "b"]))
    assert len(direct) == 2
    assert gateway == direct
    direct, gateway = embedders.each(lambda e: e.embed_query("a"))
    assert gateway == direct


# ------------------------------------------------------------------------------------------ LlamaIndex


@pytest.fixture
def llama_llms(ollama: RealOllama, llm_url: str) -> Pair:
    return Pair(
        Ollama(model="tiny", base_url=ollama.url, request_timeout=60),
        Ollama(model="tiny", base_url=llm_url, request_timeout=60, headers=AUTH),
    )


def test_llama_index_complete(llama_llms: Pair) -> None:
    direct, gateway = llama_llms.each(lambda m: m.complete("hi"))
    assert direct.text == SENTENCE
    assert stable(gateway) == stable(direct)


def test_llama_index_chat(llama_llms: Pair) -> None:
    direct, gateway = llama_llms.each(lambda m: m.chat([ChatMessage(role="user", content="hi")]))
    assert direct.message.content == SENTENCE
    assert stable(gateway) == stable(direct)


def test_llama_index_stream_complete(llama_llms: Pair) -> None:
    direct, gateway = llama_llms.each(lambda m: list(m.stream_complete("hi")))
    assert direct[-1].text == SENTENCE
    assert stable(gateway) == stable(direct)


def test_llama_index_stream_chat(llama_llms: Pair) -> None:
    direct, gateway = llama_llms.each(lambda m: list(m.stream_chat([ChatMessage(role="user", content="hi")])))
    assert [c.delta for c in direct if c.delta] == WORDS
    assert stable(gateway) == stable(direct)


def test_llama_index_chat_with_tools(ollama: RealOllama, llm_url: str) -> None:
    tool = FunctionTool.from_defaults(fn=get_weather)
    models = Pair(
        Ollama(model="tools2", base_url=ollama.url, request_timeout=60),
        Ollama(model="tools2", base_url=llm_url, request_timeout=60, headers=AUTH),
    )

    def calls(model: Ollama) -> list[tuple[str, Any]]:
        response = model.chat_with_tools([tool], user_msg="hi", allow_parallel_tool_calls=True)
        return [(c.tool_name, c.tool_kwargs) for c in model.get_tool_calls_from_response(response)]

    direct, gateway = models.each(calls)
    assert direct == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "London"})]
    assert gateway == direct


async def test_llama_index_async_complete_and_stream_chat(llama_llms: Pair) -> None:
    async def answers(model: Ollama) -> list[Any]:
        whole = await model.acomplete("hi")
        parts = [c async for c in await model.astream_chat([ChatMessage(role="user", content="hi")])]
        return [whole, parts]

    direct, gateway = await answers(llama_llms.direct), await answers(llama_llms.gateway)
    assert direct[0].text == SENTENCE
    assert stable(gateway) == stable(direct)


def test_llama_index_embeddings_give_equal_vectors(ollama: RealOllama, llm_url: str) -> None:
    embedders = Pair(
        OllamaEmbedding(model_name="tiny", base_url=ollama.url),
        OllamaEmbedding(model_name="tiny", base_url=llm_url, client_kwargs={"headers": AUTH}),
    )
    direct, gateway = embedders.each(lambda e: e.get_text_embedding_batch(["a", "b"]))
    assert len(direct) == 2
    assert gateway == direct
    direct, gateway = embedders.each(lambda e: e.get_query_embedding("a"))
    assert gateway == direct


# --------------------------------------------------------------------------------------------- LiteLLM


@pytest.fixture(scope="module")
def litellm() -> ModuleType:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its price list from the package, not the network
        return importlib.import_module("litellm")


@pytest.fixture
def litellm_ends(ollama: RealOllama, llm_url: str) -> Pair:
    """Keyword arguments for one LiteLLM call to Ollama directly, and through the gateway."""
    return Pair({"api_base": ollama.url}, {"api_base": llm_url, "api_key": API_KEY})


@pytest.mark.parametrize("model", ["ollama_chat/tiny", "ollama/tiny"])
def test_litellm_completion(litellm: ModuleType, litellm_ends: Pair, model: str) -> None:
    direct, gateway = litellm_ends.each(lambda end: litellm.completion(model=model, messages=HI, **end))
    assert direct.choices[0].message.content == SENTENCE
    assert stable(gateway) == stable(direct)


@pytest.mark.parametrize("model", ["ollama_chat/tiny", "ollama/tiny"])
def test_litellm_completion_streamed(litellm: ModuleType, litellm_ends: Pair, model: str) -> None:
    def deltas(end: dict[str, Any]) -> list[Any]:
        chunks = litellm.completion(model=model, messages=HI, stream=True, **end)
        return [(c.choices[0].delta.content, c.choices[0].finish_reason) for c in chunks]

    direct, gateway = litellm_ends.each(deltas)
    assert [text for text, _ in direct if text] == WORDS
    assert direct[-1][1] == "stop"
    assert gateway == direct


async def test_litellm_async_completion_streamed(litellm: ModuleType, litellm_ends: Pair) -> None:
    async def deltas(end: dict[str, Any]) -> list[Any]:
        chunks = await litellm.acompletion(model="ollama_chat/tiny", messages=HI, stream=True, **end)
        return [(c.choices[0].delta.content, c.choices[0].finish_reason) async for c in chunks]

    direct, gateway = await deltas(litellm_ends.direct), await deltas(litellm_ends.gateway)
    assert [text for text, _ in direct if text] == WORDS
    assert gateway == direct


def test_litellm_embedding_through_v1(litellm: ModuleType, ollama: RealOllama, llm_url: str) -> None:
    ends = Pair(
        {"api_base": ollama.url + "/v1", "api_key": "ollama"}, {"api_base": llm_url + "/v1", "api_key": API_KEY}
    )
    direct, gateway = ends.each(lambda end: litellm.embedding(model="openai/tiny", input=["a", "b"], **end))
    assert len(direct.data) == 2
    assert stable(gateway) == stable(direct)
