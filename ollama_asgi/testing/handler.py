"""What a route handler reads of the emulator: the routes take this, not ``OllamaEmulator`` itself.

The emulator dispatches to the routes, so the routes must not import the emulator; they are typed
against ``EmulatorState``, which ``OllamaEmulator`` is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ollama_asgi.testing.generation import ReplyFunction
from ollama_asgi.testing.models import EmulatedModel, ModelStore
from ollama_asgi.testing.records import EmulatorStats
from ollama_asgi.testing.responses import Exchange
from ollama_asgi.testing.scheduler import Scheduler
from ollama_asgi.testing.wire import Options

__all__ = ["EmulatorState", "Handler"]


class EmulatorState(Protocol):
    """The emulator's models, scheduler, counters and settings, as the routes use them."""

    @property
    def store(self) -> ModelStore: ...

    @property
    def registry(self) -> ModelStore: ...

    @property
    def blobs(self) -> dict[str, int]: ...

    @property
    def scheduler(self) -> Scheduler: ...

    @property
    def stats(self) -> EmulatorStats: ...

    @property
    def version(self) -> str: ...

    @property
    def default_reply_tokens(self) -> int: ...

    @property
    def reply(self) -> ReplyFunction | None: ...

    def lookup(self, name: str) -> EmulatedModel | None: ...

    def options_for(self, model: EmulatedModel, requested: dict[str, Any] | None) -> Options: ...

    def interval_for(self, ex: Exchange) -> float: ...

    async def pace(self, ex: Exchange) -> None: ...


Handler = Callable[[EmulatorState, Exchange], Awaitable[None]]
