"""The traffic model: which model each client usually asks for next, learnt from what it asked for.

Traffic to local LLMs is patterned per client: a pipeline embeds, then chats; a team's assistant
switches between the same two models all day. Interleaved on one backend, several such clients
make a sequence whose transitions mean nothing (A from one client, then C from another), so the
gateway learns transitions per principal, from each one's own sequence. A principal's own
transitions predict once they are evidence enough; until then (a new client, a rare model) the
transitions of all tracked principals pooled together do, under the same evidence rule. Memory is
bounded: the last ``window`` transitions of each of the ``max_principals`` most recent principals.

A prediction is only a hint, which pre-warming (``prewarm``) acts on and the eviction of a
request's load consults (``next_uses``).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

__all__ = ["Prediction", "TrafficModel"]


@dataclass(frozen=True, slots=True)
class Prediction:
    model: str
    confidence: float
    evidence: int  # transitions from the current model the prediction rests on


@dataclass(slots=True)
class _Principal:
    """One principal's recent model-to-model transitions, oldest first."""

    last: str | None = None
    transitions: deque[tuple[str, str]] = field(default_factory=deque)
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    seen: float = 0.0  # monotonic time of its last request
    gap: float = 0.0  # its usual time between requests (moving average)


@dataclass(slots=True)
class TrafficModel:
    """Model-to-model transitions of each principal on one backend, and their pool."""

    window: int = 100  # transitions kept per principal
    threshold: float = 0.5
    min_observations: int = 2
    max_principals: int = 1024  # least recently seen ones are forgotten first
    _principals: OrderedDict[str, _Principal] = field(default_factory=OrderedDict)
    _pooled: dict[str, Counter[str]] = field(default_factory=dict)
    issued: int = 0
    hits: int = 0  # a request found its model loaded because it had been pre-warmed
    misses: int = 0  # a request found its model cold
    warmed: set[str] = field(default_factory=set)  # pre-warmed and not asked for since
    recent: deque[tuple[str, bool]] = field(default_factory=lambda: deque(maxlen=100))  # (model, cold)

    def observe(self, model: str, *, cold: bool, principal: str = "", now: float | None = None) -> None:
        """Record one request of ``principal`` for ``model`` (``cold``: it had to be loaded first)."""
        now = time.monotonic() if now is None else now
        clients = self._principals
        client = clients.get(principal)
        if client is None:
            client = clients[principal] = _Principal()
            if len(clients) > self.max_principals:
                _, gone = clients.popitem(last=False)
                for old in gone.transitions:
                    _uncount(self._pooled, old)
        else:
            clients.move_to_end(principal)
        if client.last is not None and client.last != model:
            step = (client.last, model)
            client.transitions.append(step)
            client.counts.setdefault(client.last, Counter())[model] += 1
            self._pooled.setdefault(client.last, Counter())[model] += 1
            if len(client.transitions) > self.window:
                old = client.transitions.popleft()
                _uncount(client.counts, old)
                _uncount(self._pooled, old)
        if client.seen:
            since = now - client.seen
            client.gap = since if not client.gap else 0.7 * client.gap + 0.3 * since
        client.last, client.seen = model, now
        self.recent.append((model, cold))
        if cold:
            self.misses += 1
            self.warmed.discard(model)
        elif model in self.warmed:
            self.hits += 1
            self.warmed.discard(model)

    def predict(self, current: str, principal: str = "") -> Prediction | None:
        """The model ``principal`` most likely asks for after ``current``, if confident enough.

        The principal's own transitions decide once there are ``min_observations`` of them, even to
        say "unsure"; the pool speaks only for a principal with too few of its own.
        """
        client = self._principals.get(principal)
        own = client.counts.get(current) if client is not None else None
        if own is not None and own.total() >= self.min_observations:
            return self._confident(own)
        pooled = self._pooled.get(current)
        if pooled is not None and pooled.total() >= self.min_observations:
            return self._confident(pooled)
        return None

    def _confident(self, counts: Counter[str]) -> Prediction | None:
        total = counts.total()
        model, count = counts.most_common(1)[0]
        confidence = count / total
        return Prediction(model, confidence, total) if confidence >= self.threshold else None

    def next_uses(
        self, now: float | None = None, *, steps: int = 3, idle_gaps: float = 10.0, quiet_after: float = 60.0
    ) -> dict[str, float]:
        """Seconds until each model is next expected, from the predicted sequences of the principals
        active now, ``steps`` requests ahead; a model nobody is expected to ask for is absent. What
        to evict first when a request needs room. A principal is active until it has been quiet for
        ``idle_gaps`` of its usual gaps and at least ``quiet_after`` seconds (a burst's gaps are short)."""
        now = time.monotonic() if now is None else now
        soonest: dict[str, float] = {}
        for principal, client in reversed(self._principals.items()):
            if client.last is None or not client.gap:
                continue
            if now - client.seen > max(idle_gaps * client.gap, quiet_after):
                continue
            model = client.last
            for step in range(1, steps + 1):
                prediction = self.predict(model, principal)
                if prediction is None:
                    break
                model = prediction.model
                at = max(0.0, client.seen + step * client.gap - now)
                if at < soonest.get(model, float("inf")):
                    soonest[model] = at
        return soonest

    @property
    def principals(self) -> int:
        """Principals tracked now (at most ``max_principals``)."""
        return len(self._principals)


def _uncount(counts: dict[str, Counter[str]], step: tuple[str, str]) -> None:
    before, after = step
    following = counts[before]
    following[after] -= 1
    if following[after] <= 0:
        del following[after]
        if not following:
            del counts[before]
