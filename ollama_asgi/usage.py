"""Token counts from Ollama's final chunk (native) or ``usage`` object (OpenAI-compatible).

Read by a byte search, not a JSON parse: it runs for every request (metrics, access log, token
rate limits) on what can be a whole non-streamed answer. Ollama writes its counters after the
message, so the last occurrence of a key is the top-level one even when a tool call's arguments
repeat the name; a key inside a JSON string cannot match, since its quotes are escaped there.
"""

from __future__ import annotations

import re

__all__ = ["Usage", "usage_from"]


class Usage(tuple[int, int]):
    """``(prompt_tokens, completion_tokens)``."""

    @property
    def total(self) -> int:
        return self[0] + self[1]


_NONE = Usage((0, 0))
_NUMBER = re.compile(rb"[ \t]*([0-9]+)")


def usage_from(final: bytes | None) -> Usage:
    if not final:
        return _NONE
    prompt = _count(final, b'"prompt_eval_count":')
    completion = _count(final, b'"eval_count":')
    if prompt >= 0 or completion >= 0:  # native (embeddings carry only the prompt's count)
        return Usage((max(prompt, 0), max(completion, 0)))
    at = final.rfind(b'"usage":')
    if at < 0:
        return _NONE
    # OpenAI-compatible: everything a client or model wrote is inside JSON strings there.
    usage = final[at:]
    return Usage((max(_count(usage, b'"prompt_tokens":'), 0), max(_count(usage, b'"completion_tokens":'), 0)))


def _count(data: bytes, key: bytes) -> int:
    """The non-negative integer after the last ``key``; 0 when it is something else, -1 when absent."""
    at = data.rfind(key)
    if at < 0:
        return -1
    number = _NUMBER.match(data, at + len(key))
    return int(number[1]) if number is not None else 0
