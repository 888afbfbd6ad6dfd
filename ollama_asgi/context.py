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

import logging
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from ollama_asgi.errors import GatewayError

__all__ = ["ContextChoice", "TokenCounter", "choose_num_ctx", "estimate_tokens", "truncate_messages"]

logger = logging.getLogger("ollama_asgi.context")

_BYTES_PER_TOKEN = 4.0
_PER_MESSAGE = 4  # role markers and separators of a chat template
_PER_IMAGE = 768  # vision encoders spend a few hundred tokens per image
_TEMPLATE = 16
_PLAIN_MESSAGE = frozenset({"role", "content"})


def _text_tokens(text: object) -> int:
    if not isinstance(text, str) or not text:
        return 0
    return int(len(text.encode("utf-8", "surrogatepass")) / _BYTES_PER_TOKEN) + 1


def _message_tokens(message: object, text: Callable[[object], int]) -> int:
    if not isinstance(message, dict):
        return 0
    tokens = _PER_MESSAGE + text(message.get("content")) + text(message.get("thinking"))
    images = message.get("images")
    if isinstance(images, list):
        tokens += _PER_IMAGE * len(images)
    calls = message.get("tool_calls")
    if calls:
        tokens += text(repr(calls))
    return tokens


def estimate_tokens(body: dict[str, Any], text: Callable[[object], int] = _text_tokens) -> int:
    """Prompt tokens of a native ``/api/generate``, ``/api/chat`` or ``/api/embed`` body.

    ``text`` counts the tokens of one string: the length estimate by default, a real tokenizer
    when one is configured for the model (see ``TokenCounter``).
    """
    tokens = _TEMPLATE
    messages = body.get("messages")
    if isinstance(messages, list):
        if text is _text_tokens:
            tokens += _chat_estimate(messages)
        else:
            tokens += sum(_message_tokens(m, text) for m in messages)
    for key in ("prompt", "system", "suffix"):
        value = body.get(key)
        if value:  # absent or empty counts 0 either way
            tokens += text(value)
    images = body.get("images")
    if isinstance(images, list):
        tokens += _PER_IMAGE * len(images)
    tools = body.get("tools")
    if tools:
        tokens += text(repr(tools))
    embed_input = body.get("input")
    if isinstance(embed_input, str):
        tokens += text(embed_input)
    elif isinstance(embed_input, list):
        tokens += max((text(item) for item in embed_input), default=0)  # each input is its own sequence
    return tokens


def _chat_estimate(messages: list[object]) -> int:
    """``_message_tokens`` of every message by length, in one loop: it runs on every chat request."""
    tokens = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str) and content:
            size = len(content) if content.isascii() else len(content.encode("utf-8", "surrogatepass"))
            tokens += int(size / _BYTES_PER_TOKEN) + 1
        if message.keys() <= _PLAIN_MESSAGE:
            tokens += _PER_MESSAGE
        else:  # thinking, images, tool calls: counted as _message_tokens does
            tokens += _message_tokens(message, _text_tokens) - _text_tokens(content)
    return tokens


class TokenCounter:
    """Counts prompt tokens with a model's real tokenizer when one is configured, else estimates.

    Tokenizers are ``tokenizer.json`` files (the Hugging Face ``tokenizers`` format) on local disk,
    mapped to model name patterns; nothing is downloaded. A file that cannot be loaded is logged
    once and the estimate is used for that model.
    """

    def __init__(self, files: tuple[tuple[str, str], ...] = ()) -> None:
        self.files = files
        self._loaded: dict[str, Callable[[object], int] | None] = {}

    def _for(self, model: str) -> Callable[[object], int] | None:
        if model in self._loaded:
            return self._loaded[model]
        path = next(
            (
                p
                for pattern, p in self.files
                if fnmatchcase(model, pattern) or fnmatchcase(model.removesuffix(":latest"), pattern)
            ),
            None,
        )
        counter: Callable[[object], int] | None = None
        if path is not None:
            try:
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_file(path)

                def count_text(text: object) -> int:
                    if not isinstance(text, str) or not text:
                        return 0
                    return len(tokenizer.encode(text, add_special_tokens=False).ids)

                counter = count_text
            except Exception as exc:  # a missing package or file must not take the gateway down
                logger.warning("tokenizer %s for %s unusable, estimating instead: %s", path, model, exc)
        self._loaded[model] = counter
        return counter

    def text_for(self, model: str) -> Callable[[object], int]:
        """How one string of ``model``'s prompts is counted."""
        return self._for(model) or _text_tokens

    def count(self, body: dict[str, Any], model: str) -> int:
        if not self.files:
            return estimate_tokens(body)
        return estimate_tokens(body, self.text_for(model))


@dataclass(slots=True)
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

    A ``num_predict`` (``max_tokens`` under ``/v1``) is a limit on the answer, not a size: it is
    clamped, as a client's ``num_ctx`` is clamped to ``cap``, to what the largest bucket leaves
    after the prompt (never below ``reserve``). Otherwise a client sending a huge ``max_tokens`` as
    "no limit" loads the model at its largest context, which may not fit the GPU (Ollama's 500) and
    reloads it for everyone. An answer that outgrows its context ends there, as on Ollama itself.
    """
    answer = num_predict if num_predict > 0 else reserve
    largest = min(max(buckets), cap) if buckets else cap
    if num_predict > 0 and prompt_tokens + answer > largest:
        answer = max(min(answer, reserve), largest - prompt_tokens)
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


def truncate_messages(body: dict[str, Any], fits: int, text: Callable[[object], int] = _text_tokens) -> int:
    """Drop the oldest non-system messages until the estimate fits in ``fits``; return how many went.

    The last message (the question being asked) is never dropped. ``body["messages"]`` is replaced,
    not edited: the list is the client's parsed body too, which a retry on another backend and the
    access log read as the client sent it.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    messages = body["messages"] = list(messages)
    dropped = 0
    while estimate_tokens(body, text) > fits:
        victim = next(
            (i for i, m in enumerate(messages[:-1]) if not (isinstance(m, dict) and m.get("role") == "system")), None
        )
        if victim is None:
            break
        del messages[victim]
        dropped += 1
    return dropped
