"""Model listings over several backends: ``/api/tags``, ``/api/ps`` and ``/v1/models``, one entry per model.

With several backends, or a caller restricted to some models, the gateway answers these itself:
it asks every available backend, keeps the first entry of each model, and shows the caller only
the models it may use.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from ollama_asgi.errors import GatewayError
from ollama_asgi.intake import Progress, Request
from ollama_asgi.placement import Placement
from ollama_asgi.policy import Policy
from ollama_asgi.responses import JSON, send_bytes
from ollama_asgi.types import Send
from ollama_asgi.upstream import UpstreamError

__all__ = ["LISTINGS", "merged_listing"]

LISTINGS = frozenset({"tags", "ps", "openai_models"})


async def merged_listing(
    request: Request, send: Send, progress: Progress, *, placement: Placement, policy: Policy, retry_after: bytes
) -> None:
    """The listing ``request`` asks for, merged over every available backend."""
    now = time.monotonic()
    backends = [b for b in placement.backends if b.available(now)]
    if not backends:
        raise GatewayError(503, "no Ollama backend is available right now", [(b"retry-after", retry_after)])
    path = request.path
    answers = await asyncio.gather(
        *(b.upstream.call_json("GET", path, within=10.0) for b in backends), return_exceptions=True
    )
    key, field = ("data", "id") if request.route.name == "openai_models" else ("models", "model")
    merged: dict[str, object] = {}
    for backend, answer in zip(backends, answers, strict=True):
        if isinstance(answer, BaseException):
            if isinstance(answer, UpstreamError):
                placement.record_failure(backend, str(answer))
                continue
            raise answer
        status, body = answer
        if status != 200 or not isinstance(body, dict):
            continue
        for entry in body.get(key) or []:
            if isinstance(entry, dict):
                name = str(entry.get(field) or entry.get("name"))
                if policy.may_see(request.principal, name):
                    merged.setdefault(name, entry)
    payload: dict[str, object] = {key: list(merged.values())}
    content_type = JSON
    if request.route.name == "openai_models":
        payload = {"object": "list", "data": list(merged.values()) or None}
        content_type = b"application/json"  # as Ollama's OpenAI layer writes it (no charset)
    await send_bytes(progress.record.capture(send), 200, orjson.dumps(payload), content_type)
