"""Model names: their lookup form, as Ollama looks a model up."""

from __future__ import annotations

from ollama_asgi.model_names import canonical_model


def test_canonical_model_adds_latest_and_lowercases() -> None:
    assert canonical_model("Llama3.2") == "llama3.2:latest"
    assert canonical_model("llama3.2:3b") == "llama3.2:3b"
    assert canonical_model("localhost:5000/ns/m") == "localhost:5000/ns/m:latest"
