"""Ollama's native /api/chat chunks, as the translators of other APIs read them."""

from __future__ import annotations

from typing import Any

DONE = {"done_reason": "stop", "prompt_eval_count": 30, "eval_count": 4}
CALL = {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def chunk(content: str = "", thinking: str = "", calls: list[Any] | None = None, **final: Any) -> dict[str, Any]:
    """One chunk; keyword arguments (``DONE``'s, say) make it the final one."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return {"model": "m", "message": message, "done": bool(final), **final}
