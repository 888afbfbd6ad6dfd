"""Small helpers that write complete ASGI responses."""

from __future__ import annotations

from ollama_asgi.errors import GatewayError, error_body
from ollama_asgi.types import Send

__all__ = ["send_bytes", "send_error"]

JSON = b"application/json; charset=utf-8"


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        raw.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_error(
    send: Send, error: GatewayError, *, openai: bool, anthropic: bool = False, head: bool = False
) -> None:
    await send_bytes(
        send,
        error.status,
        error_body(error.status, error.message, openai=openai, anthropic=anthropic),
        headers=error.headers,
        head=head,
    )
