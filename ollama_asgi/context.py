"""Size each request's context window (``num_ctx``) from a few sticky buckets.

In Ollama ``num_ctx`` is a load-time option: a request that asks for a different value than the
loaded runner has reloads the model, and one that omits it asks for the default and reloads too.
So the gateway always sends an explicit ``num_ctx``: the smallest bucket that fits the prompt
plus the answer, capped by the model's real context length, and, when the loaded runner's size
already fits, that one, so no request causes a reload it does not need.

Token counts are estimated from text length (about four bytes per token for English and code,
a little pessimistic for most tokenizers, which errs on the side of a larger window).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ollama_asgi.errors import GatewayError

__all__ = ["ContextChoice", "choose_num_ctx", "estimate_tokens", "truncate_messages"]

_BYTES_PER_TOKEN = 4.0
_PER_MESSAGE = 4  # role markers and separators of a chat template
_PER_IMAGE = 768  # vision encoders spend a few hundred tokens per image
_TEMPLATE = 16


def _text_tokens(text: object) -> int:
    if not isinstance(text, str) or not text:
        return 0
    return int(len(text.encode("utf-8", "surrogatepass")) / _BYTES_PER_TOKEN) + 1


def _message_tokens(message: object) -> int:
    if not isinstance(message, dict):
        return 0
    tokens = _PER_MESSAGE + _text_tokens(message.get("content")) + _text_tokens(message.get("thinking"))
    images = message.get("images")
    if isinstance(images, list):
        tokens += _PER_IMAGE * len(images)
    calls = message.get("tool_calls")
    if calls:
        tokens += _text_tokens(repr(calls))
    return tokens


def estimate_tokens(body: dict[str, Any]) -> int:
    """Estimated prompt tokens of a native ``/api/generate``, ``/api/chat`` or ``/api/embed`` body."""
    tokens = _TEMPLATE
    messages = body.get("messages")
    if isinstance(messages, list):
        tokens += sum(_message_tokens(m) for m in messages)
    tokens += _text_tokens(body.get("prompt")) + _text_tokens(body.get("system")) + _text_tokens(body.get("suffix"))
    images = body.get("images")
    if isinstance(images, list):
        tokens += _PER_IMAGE * len(images)
    tools = body.get("tools")
    if tools:
        tokens += _text_tokens(repr(tools))
    embed_input = body.get("input")
    if isinstance(embed_input, str):
        tokens += _text_tokens(embed_input)
    elif isinstance(embed_input, list):
        tokens += max((_text_tokens(item) for item in embed_input), default=0)  # each input is its own sequence
    return tokens


@dataclass(frozen=True, slots=True)
class ContextChoice:
    num_ctx: int
    needed: int  # estimated prompt + answer tokens
    cap: int
    reason: str  # "bucket", "sticky" (the loaded runner's size fits), "client" or "cap"


def choose_num_ctx(
    *,
    prompt_tokens: int,
    num_predict: int,
    buckets: tuple[int, ...],
    cap: int,
    loaded: int | None,
    requested: int | None,
    reserve: int,
) -> ContextChoice:
    """Pick the context window for one request; raise 400 when the prompt cannot fit under ``cap``.

    ``reserve`` is the room kept for the answer when the client sets no ``num_predict``.
    """
    answer = num_predict if num_predict > 0 else reserve
    needed = prompt_tokens + answer
    if prompt_tokens + min(answer, 16) > cap:
        raise GatewayError(
            400,
            f"the prompt needs about {prompt_tokens} tokens, more than this model's {cap}-token context window",
        )
    if requested is not None:
        return ContextChoice(min(requested, cap), needed, cap, "client" if requested <= cap else "cap")
    if loaded is not None and needed <= loaded <= cap:
        return ContextChoice(loaded, needed, cap, "sticky")
    for size in buckets:
        if size >= needed and size <= cap:
            return ContextChoice(size, needed, cap, "bucket")
    return ContextChoice(cap, needed, cap, "cap")


def truncate_messages(body: dict[str, Any], fits: int) -> int:
    """Drop the oldest non-system messages until the estimate fits in ``fits``; return how many went.

    The last message (the question being asked) is never dropped.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    dropped = 0
    while estimate_tokens(body) > fits:
        victim = next(
            (i for i, m in enumerate(messages[:-1]) if not (isinstance(m, dict) and m.get("role") == "system")), None
        )
        if victim is None:
            break
        del messages[victim]
        dropped += 1
    return dropped
