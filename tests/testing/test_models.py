"""The catalogue: model names, digests, memory and the built-in models."""

from __future__ import annotations

import re

import pytest

from ollama_asgi.testing import DEFAULT_MODELS, EmulatedModel
from ollama_asgi.testing.models import ModelStore, models_from_json, parse_name


def test_name_without_tag_means_latest() -> None:
    assert EmulatedModel(name="mistral", size=1).name == "mistral:latest"


def test_name_in_the_default_namespace_is_shown_short() -> None:
    parsed = parse_name("registry.ollama.ai/library/llama3.2:3b")
    assert parsed is not None
    assert parsed.display == "llama3.2:3b"


def test_name_in_another_namespace_keeps_it() -> None:
    parsed = parse_name("someone/tiny")
    assert parsed is not None
    assert parsed.display == "someone/tiny:latest"


@pytest.mark.parametrize("name", ["", "   ", "a/b/c/d", "bad name"])
def test_invalid_names_do_not_parse(name: str) -> None:
    assert parse_name(name) is None


def test_lookup_is_case_insensitive() -> None:
    store = ModelStore([EmulatedModel(name="Llama3.2", size=1)])
    assert store.get("LLAMA3.2:LATEST") is not None


def test_digest_is_derived_from_the_name_when_omitted() -> None:
    first = EmulatedModel(name="a", size=1)
    assert re.fullmatch(r"[0-9a-f]{64}", first.digest)
    assert first.digest == EmulatedModel(name="a:latest", size=2).digest
    assert first.digest != EmulatedModel(name="b", size=1).digest


def test_copy_keeps_the_blob_digest() -> None:
    model = EmulatedModel(name="a", size=1)
    assert model.renamed("b").digest == model.digest


def test_memory_grows_with_context_and_parallel_slots() -> None:
    model = EmulatedModel(name="m", size=1000, embedding_length=10)
    assert model.memory_bytes(100, 1) == 1000 + 100 * 4 * 10
    assert model.memory_bytes(100, 2) == 1000 + 2 * 100 * 4 * 10


def test_embedding_models_need_a_dimension() -> None:
    with pytest.raises(ValueError, match="embedding_length"):
        EmulatedModel(name="e", size=1, capabilities=("embedding",))


def test_default_models_cover_chat_vision_thinking_and_embeddings() -> None:
    by_name = {model.name: model for model in DEFAULT_MODELS}
    assert {"llama3.2:latest", "qwen2.5:0.5b", "llava:7b", "nomic-embed-text:latest", "all-minilm:latest"} <= set(
        by_name
    )
    assert by_name["llama3.2:latest"].context_length == 131072
    assert "vision" in by_name["llava:7b"].capabilities
    assert by_name["nomic-embed-text:latest"].embedding_length == 768
    assert by_name["all-minilm:latest"].embedding_length == 384
    assert any("thinking" in model.capabilities for model in DEFAULT_MODELS)


def test_default_models_are_hashable() -> None:
    assert len(set(DEFAULT_MODELS)) == len(DEFAULT_MODELS)


def test_models_from_json_builds_models() -> None:
    models = models_from_json([{"name": "x", "size": 5, "capabilities": ["completion"], "parameters": {"num_ctx": 8}}])
    assert models[0].name == "x:latest"
    assert models[0].parameters == (("num_ctx", 8),)
