"""The package's errors: a setting's, and the gateway's with their wire shapes: Ollama's
``{"error": "..."}``, OpenAI's nested object and Anthropic's typed one.

Ollama clients read ``error`` as a string; OpenAI clients expect an object with ``message`` and
``type``; the anthropic client reads ``{"type": "error", "error": {"type", "message"}}``. One
exception type carries status, message and headers, and is rendered for the API family the
request came in on, so no handler has to know which shape to write.

:class:`ConfigError` lives here, below every module, because settings are not the only ones to
raise it: the parsers of their values (durations) serve the request path too.
"""

from __future__ import annotations

import secrets

import orjson

__all__ = ["ConfigError", "GatewayError", "error_body", "stream_error_line"]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


# Anthropic's error types, as Ollama's own /v1/messages maps statuses to them (413 as Anthropic does).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; ``field`` names it, ``detail`` says what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"ollama-asgi setting {field!r}: {message}")
        self.field = field
        self.detail = message


class GatewayError(Exception):
    """An answer the gateway gives instead of the upstream's; never a bare 500.

    ``reason`` names the cause for metrics and logs where the status alone is ambiguous (a 503 may
    mean a full queue, a missed deadline or an unreachable backend); empty means "the status says it".
    """

    def __init__(
        self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None, *, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []
        self.reason = reason


def _openai_error(status: int, message: str) -> dict[str, object]:
    kind = _OPENAI_TYPES.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def anthropic_error(status: int, message: str) -> dict[str, object]:
    """Anthropic's error object, with a request id as Ollama's ``/v1/messages`` gives one."""
    return {
        "type": "error",
        "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
        "request_id": f"req_{secrets.token_hex(12)}",
    }


def error_body(status: int, message: str, *, openai: bool, anthropic: bool = False) -> bytes:
    """The JSON body of an error answered before any byte of the response was sent."""
    if anthropic:
        return orjson.dumps(anthropic_error(status, message))
    if openai:
        return orjson.dumps(_openai_error(status, message))
    return orjson.dumps({"error": message})


def stream_error_line(message: str, *, sse: bool, anthropic: bool = False, status: int = 502) -> bytes:
    """The terminal line that ends a stream that already started with status 200.

    Ollama ends a broken NDJSON stream with one ``{"error": ...}`` line; under ``/v1`` the error is
    an SSE event carrying an OpenAI error object, which the openai client raises as ``APIError``;
    under ``/v1/messages`` an ``error`` event, which the anthropic client raises.
    """
    if anthropic:
        error = {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
        return b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
    if sse:
        return b"data: " + orjson.dumps(_openai_error(502, message)) + b"\n\n"
    return orjson.dumps({"error": message}) + b"\n"
