"""One structured line per request on the ``ollama_asgi.access`` logger.

The message is a JSON object, so plain ``logging`` configurations already produce machine-readable
lines; the same fields are attached as ``record.ollama_asgi`` (a dict) for JSON formatters that
merge extras. Prompts stay out of logs unless ``Settings.log_prompts`` says otherwise, because
they are often the most sensitive data a service handles.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from ollama_asgi.record import RequestRecord
from ollama_asgi.usage import Usage

__all__ = ["AccessLog"]

logger = logging.getLogger("ollama_asgi.access")

# Probes and scrapes arrive every few seconds; when they succeed they are only worth a debug line.
_QUIET_ROUTES = frozenset({"health", "metrics", "status"})
_PROMPT_KEYS = ("system", "prompt", "suffix", "messages", "input")


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class AccessLog:
    __slots__ = ("log_prompts",)

    def __init__(self, *, log_prompts: bool = False) -> None:
        self.log_prompts = log_prompts

    def write(
        self, record: RequestRecord, status: int, reason: str, error: str | None, now: float, usage: Usage
    ) -> None:
        route = record.route.name if record.route is not None else None
        if status >= 500 or (error and status < 400):
            level = logging.WARNING  # an upstream failure, or a stream that broke after it started
        elif route in _QUIET_ROUTES and status < 400:
            level = logging.DEBUG
        else:
            level = logging.INFO
        if not logger.isEnabledFor(level):
            return
        result = record.result
        prompt_tokens, completion_tokens = usage
        parsed = record.parsed
        fields: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "request_id": record.request_id,
            "method": record.method,
            "route": route,
            "model": parsed.model if parsed is not None else None,
            "principal": record.principal.id if record.principal is not None else None,
            "backend": record.backend or None,
            "status": status,
            "reason": reason or None,
            "queue_wait": _seconds(record.queued),
            "ttfb": _seconds(None if record.first_byte is None else record.first_byte - record.started),
            "duration": _seconds(now - record.started),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "bytes": result.sent if result is not None else None,
            "error": error,
        }
        if self.log_prompts and parsed is not None:
            fields["prompt"] = _prompt_of(parsed.body)
        logger.log(level, orjson.dumps(fields).decode(), extra={"ollama_asgi": fields})


def _prompt_of(body: dict[str, Any]) -> dict[str, Any]:
    """The text a request sent; images are left out (they are large and add nothing to a log)."""
    prompt: dict[str, Any] = {}
    for key in _PROMPT_KEYS:
        if key not in body:
            continue
        value = body[key]
        if key == "messages" and isinstance(value, list):
            value = [
                {k: v for k, v in message.items() if k != "images"} if isinstance(message, dict) else message
                for message in value
            ]
        prompt[key] = value
    return prompt
