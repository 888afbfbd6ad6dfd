"""Conversation affinity: a conversation's next turn goes back to the backend that holds its KV cache.

Ollama keeps each runner slot's KV cache and evaluates only the part of a new prompt that the cache
does not already hold, so a turn served where the previous turn ran evaluates its new message; on
any other backend it evaluates the whole history again. Where a model is loaded on several backends
(spill, or copies), placement alone would scatter a conversation's turns over them.

A conversation is known by its opening: the model, the system prompt and the messages up to and
including the first user message (for a prompt, the system prompt and the prompt's first
``PROMPT_WINDOW`` characters, once it is that long). Every later turn repeats the opening verbatim,
whereas the full history the next turn will send holds the answer as the client relays it, which
the gateway cannot predict. Two conversations with the same opening share a key, and so a backend,
where that shared prefix is cached for both.

The map from key to backend is this worker's own, bounded (least recently used first out) and
expiring. A turn whose key it does not know goes to the backend its key ranks first by rendezvous
hashing among those where the model is loaded, when that one has a free slot: workers that never
talk to each other mostly agree on where a conversation lives, without a shared store and its round
trip per request.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from ollama_asgi.backend import Backend
from ollama_asgi.model_names import canonical_model

__all__ = ["PROMPT_WINDOW", "Conversation", "ConversationAffinity", "conversation_key"]

PROMPT_WINDOW = 512  # characters of a bare prompt that identify its conversation
_HALF = 32 * 1024  # an opening longer than twice this is hashed by its two ends: a bounded cost per request
_encode = msgspec.json.Encoder(order="sorted").encode  # key order in a client's JSON does not matter


class Conversation(NamedTuple):
    """What placement needs to know of a request's conversation."""

    key: bytes
    continues: bool  # it has a history (a turn after the first), which a cache would spare evaluating again


def conversation_key(body: Mapping[str, Any], model: str) -> Conversation | None:
    """The conversation that ``body`` belongs to, or None (no conversation).

    Chat bodies (Ollama's, OpenAI's and Anthropic's ``messages``, the Responses API's ``input`` list) are
    keyed by their opening up to the first user message; bodies with a ``prompt`` by its first ``PROMPT_WINDOW`` characters, and not at
    all while shorter (too little to be worth a cache, and the next turn's window would differ).
    """
    messages = body.get("messages")
    if messages is None:
        items = body.get("input")  # the Responses API's items (an embedding's inputs are text)
        if isinstance(items, list) and items and isinstance(items[0], dict):
            messages = items
    if isinstance(messages, list) and messages:
        end = next((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
        opening: object = messages if end is None else messages[: end + 1]
        continues = end is not None and end + 1 < len(messages)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or len(prompt) < PROMPT_WINDOW:
            return None
        opening, continues = prompt[:PROMPT_WINDOW], True
    system = body.get("system", body.get("instructions"))
    raw = _encode([canonical_model(model), system, opening])
    if len(raw) > 2 * _HALF:  # the start (system prompt) and the end (first question) tell openings apart
        raw = raw[:_HALF] + raw[-_HALF:]
    return Conversation(hashlib.sha256(raw).digest()[:16], continues)  # SHA-256: in hardware on most CPUs


def _score(key: bytes, backend: Backend) -> float:
    digest = hashlib.blake2b(key + b"\0" + backend.name.encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -backend.spec.weight / math.log(unit)


@dataclass(slots=True)
class ConversationAffinity:
    """Remembers which backend served each conversation and sends its next turn there when that is wise."""

    max_extra_wait: float = 3.0
    """How much longer a turn may expect to queue where its cache is than on the best backend
    holding the model: beyond it, evaluating the history again elsewhere is the smaller cost."""
    size: int = 10_000
    ttl: float = 1800.0
    clock: Callable[[], float] = time.monotonic
    _served: OrderedDict[bytes, tuple[str, float]] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._served)

    def recall(self, key: bytes) -> str | None:
        """The backend that last served the conversation, unless it was forgotten or expired."""
        entry = self._served.get(key)
        if entry is None:
            return None
        if self.clock() - entry[1] > self.ttl:
            del self._served[key]
            return None
        return entry[0]

    def served(self, key: bytes, backend: str) -> None:
        """``backend`` serves this turn: its runner now holds the conversation's prefix."""
        now = self.clock()
        served = self._served
        served[key] = (backend, now)
        served.move_to_end(key)
        while len(served) > self.size:
            served.popitem(last=False)
        while served:  # the oldest expired ones go now, so expired entries never fill the map
            oldest = next(iter(served.values()))
            if now - oldest[1] <= self.ttl:
                break
            served.popitem(last=False)

    def choose(
        self,
        conversation: Conversation,
        loaded: Sequence[Backend],
        ready: Sequence[Backend],
        wait: Callable[[Backend], float],
    ) -> Backend | None:
        """Where this turn should go for its cache, among the available backends that have the model
        loaded (``ready``: those with a free slot); None leaves the choice to model placement.

        A turn waits for its busy backend only when it has a history to spare and another copy of the
        model to compare with; a first turn, or a model loaded once, is placement's (which spills).
        """
        if not loaded:
            return None
        name = self.recall(conversation.key)
        held = next((b for b in loaded if b.name == name), None) if name is not None else None
        if held is not None:
            if held in ready:
                return held
            if not conversation.continues or len(loaded) < 2:
                return None
            best = min(wait(b) for b in loaded)
            return held if wait(held) <= best + self.max_extra_wait else None
        if len(ready) < 2:
            return None  # nothing to choose between: placement's own choice
        first = max(loaded, key=lambda b: _score(conversation.key, b))
        return first if first in ready else None
