"""Predictive pre-warming: load the model that usually comes next before anyone asks for it.

Traffic to local LLMs is patterned: a pipeline embeds, then chats; a team's assistant switches
between the same two models all day. The gateway learns model-to-model transitions over a
sliding window of recent requests per backend, and when the next model is predicted with enough
confidence and memory allows, starts its load right away. Pre-warming goes through the same
single-flight loader and VRAM guard as any load, and the guard never evicts a model with requests
in flight.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

__all__ = ["Prediction", "TrafficModel"]


@dataclass(frozen=True, slots=True)
class Prediction:
    model: str
    confidence: float


@dataclass(slots=True)
class TrafficModel:
    """Transition frequencies over the last ``window`` requests of one backend."""

    window: int = 500
    threshold: float = 0.5
    min_observations: int = 2
    _sequence: deque[str] = field(default_factory=deque)
    _transitions: dict[str, Counter[str]] = field(default_factory=dict)
    _last: str | None = None
    issued: int = 0
    hits: int = 0  # a request found its model loaded because it had been pre-warmed
    misses: int = 0  # a request found its model cold
    warmed: set[str] = field(default_factory=set)
    recent: deque[tuple[str, bool]] = field(default_factory=lambda: deque(maxlen=100))  # (model, cold)

    def observe(self, model: str, *, cold: bool) -> None:
        """Record one request for ``model`` (``cold``: it had to be loaded first)."""
        if self._last is not None and self._last != model:
            self._transitions.setdefault(self._last, Counter())[model] += 1
            self._sequence.append(self._last + "\0" + model)
            if len(self._sequence) > self.window:
                old_from, _, old_to = self._sequence.popleft().partition("\0")
                counts = self._transitions[old_from]
                counts[old_to] -= 1
                if counts[old_to] <= 0:
                    del counts[old_to]
        self._last = model
        self.recent.append((model, cold))
        if cold:
            self.misses += 1
            self.warmed.discard(model)
        elif model in self.warmed:
            self.hits += 1
            self.warmed.discard(model)

    def predict(self, current: str) -> Prediction | None:
        """The model most likely to be asked for after ``current``, if confident enough."""
        counts = self._transitions.get(current)
        if not counts:
            return None
        total = sum(counts.values())
        if total < self.min_observations:
            return None
        model, count = counts.most_common(1)[0]
        confidence = count / total
        return Prediction(model, confidence) if confidence >= self.threshold else None
