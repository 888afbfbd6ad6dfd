"""How the gateway stops: a graceful drain on SIGTERM, and the ASGI lifespan events.

A shutdown refuses new and queued requests with 503 and Retry-After, so clients retry elsewhere at
once, and gives those in flight ``drain_timeout`` before their upstream connections are closed.
It reads the admission, the backends' slots, the model loader and the set of answers being relayed, and changes
nothing else: closing the gateway's parts is the gateway's, which built them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ollama_asgi.admission import Admission
from ollama_asgi.backend import Backend
from ollama_asgi.errors import GatewayError
from ollama_asgi.inference import ModelLifecycle
from ollama_asgi.settings import Settings
from ollama_asgi.types import Receive, Send
from ollama_asgi.upstream import UpstreamResponse

__all__ = ["Drain", "serve_lifespan"]

logger = logging.getLogger("ollama_asgi")


class Drain:
    """A graceful shutdown: once ``begun``, requests get ``error()``; in-flight relays end at the timeout."""

    def __init__(
        self,
        settings: Settings,
        *,
        admission: Admission,
        backends: list[Backend],
        lifecycle: ModelLifecycle | None,
        relaying: set[UpstreamResponse],
        retry_after: bytes,
    ) -> None:
        self.settings = settings
        self.admission = admission
        self.backends = backends  # the registry's list, changed in place
        self.lifecycle = lifecycle
        self.begun = False  # new and queued requests get 503
        self._relaying = relaying  # the upstream answers being relayed, ended at the drain timeout
        self._retry_after = retry_after
        self._timer: asyncio.Task[None] | None = None

    def begin(self) -> None:
        """Refuse what is queued and what comes; end what is in flight after ``drain_timeout``."""
        if self.begun:
            return
        self.begun = True
        backends = [backend.slots for backend in self.backends]
        refused = self.admission.close(self.error, backends)
        in_flight = sum(slots.in_flight for slots in backends)
        logger.warning(
            "shutting down: %d queued request(s) refused, %d in flight get up to %gs to finish",
            refused,
            in_flight,
            self.settings.drain_timeout,
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.create_task(self._end_in_flight_after(self.settings.drain_timeout))

    def error(self) -> GatewayError:
        retry = [(b"retry-after", self._retry_after)]
        return GatewayError(503, "the gateway is shutting down; try again", retry, reason="shutdown")

    def cancel(self) -> None:
        """Stop the drain timer (the gateway is closing: nothing is left to end)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _end_in_flight_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        logger.warning("drain timeout of %gs reached: ending %d relayed answer(s)", seconds, len(self._relaying))
        for resp in list(self._relaying):
            resp.close()  # the relay sees the connection end and closes its stream with an error line
        if self.lifecycle is not None:
            await self.lifecycle.loader.aclose()  # requests waiting for a load get 503 with Retry-After


async def serve_lifespan(receive: Receive, send: Send, aclose: Callable[[], Awaitable[None]]) -> None:
    """The ASGI lifespan protocol, where the host forwards it: nothing to start, ``aclose`` at shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
