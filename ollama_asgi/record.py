"""The facts of one request, filled in as it moves forward and read once when it ends.

The gateway sets a ``RequestRecord``'s fields as it learns them (route, principal, model, backend,
queue wait, the relay's result); the access log and the metrics read it, through ``outcome``,
after the last byte. Nothing here runs per streamed chunk.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from ollama_asgi.auth import Principal
from ollama_asgi.errors import GatewayError
from ollama_asgi.protocol import ParsedRequest
from ollama_asgi.relay import RelayResult
from ollama_asgi.routing import Route
from ollama_asgi.slots import Lease
from ollama_asgi.types import Message, Scope, Send
from ollama_asgi.upstream import UpstreamError
from ollama_asgi.usage import Usage, usage_from

__all__ = ["RequestRecord", "request_id_from"]

_MAX_REQUEST_ID = 128
_ids = random.Random()  # seeded from the OS; ids need to be unique, not secret

# Statuses whose cause needs no further naming; a GatewayError's own ``reason`` wins over these.
_REASONS = {
    400: "bad_request",
    401: "auth",
    403: "forbidden",
    404: "not_found",
    405: "not_found",
    413: "body_too_large",
    429: "rate_limit",
}


def request_id_from(scope: Scope) -> str:
    """The client's ``X-Request-Id`` when it is printable ASCII of at most 128 characters, else a new one.

    Anything else is replaced rather than cleaned, so a log line never carries control characters
    or an unbounded value from a client.
    """
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if 0 < len(value) <= _MAX_REQUEST_ID and all(0x20 < c < 0x7F for c in value):
                return bytes(value).decode("ascii")
            break
    return f"{_ids.getrandbits(128):032x}"  # a uuid4's shape, without its object or a system call


@dataclass(slots=True, eq=False)
class RequestRecord:
    """The facts of one request, set by the gateway as it learns them; read once at the end."""

    request_id: str
    started: float  # time.monotonic() when the request arrived
    method: str
    route: Route | None = None
    principal: Principal | None = None
    parsed: ParsedRequest | None = None
    backend: str = ""
    queued: float | None = None  # seconds waited for a slot
    first_byte: float | None = None  # when Ollama's response head arrived (it comes with the first token)
    result: RelayResult | None = None
    error: GatewayError | None = None
    status: int = 0  # set when the gateway answered itself (errors, /_gateway/*)
    _usage: Usage | None = None

    def usage(self) -> Usage:
        """The answer's token counts, read from its final chunk once (token rate limits, metrics and
        the access log all ask)."""
        if self._usage is None:
            self._usage = usage_from(self.result.final if self.result is not None else None)
        return self._usage

    @property
    def id_header(self) -> tuple[bytes, bytes]:
        return (b"x-request-id", self.request_id.encode("ascii"))

    def responded(self, lease: Lease | None) -> None:
        """Ollama's response head arrived: time to first byte, and the queue wait of the slot it used."""
        self.first_byte = time.monotonic()
        if lease is not None:
            self.queued = lease.queued_for

    def capture(self, send: Send) -> Send:
        """``send`` for answers the gateway writes itself: adds the request id, notes the status.

        Only used for one-shot answers (errors, ``/_gateway/*``), never for relayed streams.
        """

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), self.id_header]}
            await send(message)

        return send_with_id

    def outcome(self, exc: BaseException | None = None) -> tuple[int, str, str | None]:
        """``(status, reason, error text)``; 499 when the client left before the answer.

        An answer that failed after its status went out keeps that status (it is what the client
        got) with a reason of its own: ``stream_broken`` (the connection to Ollama failed),
        ``stream_error`` (Ollama's error line, a cut or unreadable stream) or ``client_stalled``
        (the client read nothing for ``send_timeout``).
        """
        if self.error is not None:
            error = self.error
            reason = error.reason or _REASONS.get(error.status, "")
            if not reason:
                cause = error.__cause__
                reason = "upstream_unreachable" if isinstance(cause, UpstreamError) else "unavailable"
                if error.status == 502:
                    reason = "upstream_error"
            return error.status, reason, error.message
        result = self.result
        if result is not None:
            text = result.error or result.ollama_error
            if text is None or result.status >= 400:
                return result.status, "", text
            # The status went out before the answer failed: the reason is what alerts count.
            failed = "client_stalled" if result.stalled else "stream_broken" if result.broken else "stream_error"
            return result.status, failed, text
        if isinstance(exc, Exception):
            return 500, "", f"{exc.__class__.__name__}: {exc}"
        if self.status:
            return self.status, "", None
        return 499, "", "client disconnected"
