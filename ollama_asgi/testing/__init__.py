"""An emulator of the Ollama HTTP server, for tests, demos and benchmarks.

``OllamaEmulator`` is an ASGI 3 app that answers like ``ollama serve``: the same routes, bodies,
status codes, streaming framing, scheduler behaviour (loads, reloads, eviction, parallel slots,
the pending-queue 503, keep_alive expiry) and client-disconnect handling, with deterministic
replies and injectable faults. ``EmulatorServer`` runs it on a real port.
"""

from __future__ import annotations

from ollama_asgi.testing.emulator import OllamaEmulator
from ollama_asgi.testing.faults import EmulatorStats, Fault, LoadedModelInfo, RecordedRequest
from ollama_asgi.testing.models import DEFAULT_MODELS, EmulatedModel
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
