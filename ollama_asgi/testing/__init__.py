"""An emulator of the Ollama HTTP server, for tests, demos and benchmarks.

``OllamaEmulator`` is an ASGI 3 app that answers like ``ollama serve``: the same routes, bodies,
status codes, streaming framing, scheduler behaviour (loads, reloads, eviction, parallel slots,
the pending-queue 503, keep_alive expiry) and client-disconnect handling, with deterministic
replies and injectable faults. ``EmulatorServer`` runs it on a real port::

    with EmulatorServer(parallel=2, token_interval=0.01) as server:
        httpx.post(f"{server.url}/api/generate", json={"model": "llama3.2", "prompt": "hi there"})
        server.emulator.inject(Fault(path="/api/chat", kind="midstream_error", after_lines=3))
        assert server.emulator.stats.loads == 1

A reply is the prompt's words repeated to ``options.num_predict`` tokens (``default_reply_tokens``
when absent); set ``emulator.reply`` to choose the tokens yourself.
"""

from __future__ import annotations

from ollama_asgi.testing.emulator import OllamaEmulator
from ollama_asgi.testing.faults import Fault
from ollama_asgi.testing.models import DEFAULT_MODELS, EmulatedModel
from ollama_asgi.testing.records import EmulatorStats, LoadedModelInfo, RecordedRequest
from ollama_asgi.testing.server import EmulatorServer

__all__ = [
    "DEFAULT_MODELS",
    "EmulatedModel",
    "EmulatorServer",
    "EmulatorStats",
    "Fault",
    "LoadedModelInfo",
    "OllamaEmulator",
    "RecordedRequest",
]
