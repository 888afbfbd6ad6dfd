"""Token counts from Ollama's final chunk (native) or ``usage`` object (OpenAI-compatible)."""

from __future__ import annotations

import orjson

__all__ = ["Usage", "usage_from"]


class Usage(tuple[int, int]):
    """``(prompt_tokens, completion_tokens)``."""

    @property
    def total(self) -> int:
        return self[0] + self[1]


def usage_from(final: bytes | None) -> Usage:
    if not final:
        return Usage((0, 0))
    if final.startswith(b"data:"):
        final = final[5:]
    try:
        data = orjson.loads(final)
    except orjson.JSONDecodeError:
        return Usage((0, 0))
    if not isinstance(data, dict):
        return Usage((0, 0))
    usage = data.get("usage")
    if isinstance(usage, dict):
        return Usage((_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))))
    return Usage((_int(data.get("prompt_eval_count")), _int(data.get("eval_count"))))


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
