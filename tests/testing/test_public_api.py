"""The names ``ollama_asgi.testing`` promises to other code."""

from __future__ import annotations

import ollama_asgi.testing as testing


def test_exported_names() -> None:
    assert set(testing.__all__) == {
        "DEFAULT_MODELS",
        "EmulatedModel",
        "EmulatorServer",
        "EmulatorStats",
        "Fault",
        "LoadedModelInfo",
        "OllamaEmulator",
        "RecordedRequest",
    }
    for name in testing.__all__:
        assert getattr(testing, name) is not None


def test_emulator_accepts_the_documented_settings() -> None:
    emulator = testing.OllamaEmulator(
        models=testing.DEFAULT_MODELS,
        registry=None,
        parallel=1,
        max_queue=512,
        max_loaded_models=3,
        vram_bytes=24 * 2**30,
        default_num_ctx=4096,
        default_keep_alive=300.0,
        load_base_seconds=0.0,
        load_bytes_per_second=float("inf"),
        token_interval=0.0,
        default_reply_tokens=8,
        version="0.12.6",
        check_host=True,
        check_origin=True,
        chunking="line",
    )
    assert emulator.max_queue == 512
