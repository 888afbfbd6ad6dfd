"""Model turns: swap-aware scheduling on a backend that holds fewer models than are wanted.

A backend that holds at most ``limit`` models at once (Ollama's ``OLLAMA_MAX_LOADED_MODELS``)
reloads a model for every switch, so served in arrival order a queue alternating between two models
costs a load per request. In front of the slots, a gate lets requests through for at most ``limit``
models at a time; requests for another model wait until one of those has nothing left in flight,
and then the whole group of the oldest waiting model goes through together (A B A C is served
A A B C). A waiter passed over for longer than ``max_delay`` beyond its FIFO turn closes the current
groups to newcomers, which bounds the unfairness. A request whose model is already let through costs
two dictionary updates.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from ollama_asgi.errors import GatewayError
from ollama_asgi.retry_after import retry_after

__all__ = ["ModelTurns", "Turn"]


class Turn:
    """One request's pass through a ``ModelTurns`` gate; give it back once when the request ends."""

    __slots__ = ("_gate", "enqueued", "future", "model", "position", "request_id", "seq", "waited", "due_since")

    def __init__(self, gate: ModelTurns, model: str, seq: int, request_id: str = "") -> None:
        self._gate: ModelTurns | None = gate
        self.model = model
        self.seq = seq
        self.request_id = request_id
        self.enqueued = 0.0
        self.waited = 0.0  # seconds spent waiting for the model's turn
        self.position = 0  # requests ahead of it when it started waiting
        self.due_since: float | None = None  # when it would have been served in FIFO order
        self.future: asyncio.Future[None] | None = None

    def release(self) -> None:
        gate = self._gate
        if gate is not None:
            self._gate = None
            gate._release(self)


class ModelTurns:
    """At most ``limit`` models with requests past this gate on one backend; the rest wait grouped by model.

    ``resident`` counts, per model let through, its requests not yet finished (loading, queued for a
    slot or in flight). A model with none left gives its place to the model of the oldest waiter,
    whose whole group then goes through. While that waiter is overdue (passed over for ``max_delay``
    seconds after its FIFO turn: fewer than ``capacity`` requests that came before it still
    unfinished), the current groups take no newcomers, so they drain and the turn passes.
    """

    def __init__(
        self,
        limit: int,
        max_delay: float,
        capacity: int = 1,
        estimate: Callable[[int, int], float] | None = None,
    ) -> None:
        self.limit = limit
        self.max_delay = max_delay
        self.capacity = capacity
        self.estimate = estimate  # (requests ahead, loads ahead) -> seconds
        self.resident: dict[str, int] = {}
        self.closing = False  # an overdue waiter: the current groups take no newcomers
        self.waiting = 0
        self.switches = 0  # a model let through in place of another
        self.overdue = 0  # times a waiter's bound closed the current groups
        self._queues: dict[str, deque[Turn]] = {}
        self._holders: dict[int, None] = {}  # sequence numbers of requests let through, unfinished
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None

    def try_enter(self, model: str, request_id: str = "") -> Turn | None:
        """Let the request through at once if its model may run now; None means ``enter`` must wait."""
        seq = self.enter_now(model)
        return Turn(self, model, seq, request_id) if seq else None

    def enter_now(self, model: str) -> int:
        """``try_enter`` without a ``Turn`` (the fast path): the request's number, to give to
        ``leave``, or 0 when it must wait."""
        count = self.resident.get(model)
        if count is None:
            if self.waiting or not self._make_room():
                return 0
            count = 0
        elif self.closing:
            return 0
        self.resident[model] = count + 1
        seq = self._seq = self._seq + 1
        self._holders[seq] = None
        return seq

    def _make_room(self) -> bool:
        """A place for one more model: a free one, or one whose requests are all finished."""
        if len(self.resident) < self.limit:
            return True
        for name, count in self.resident.items():  # oldest let through first
            if not count:
                del self.resident[name]
                self.switches += 1
                return True
        return False

    async def enter(
        self, model: str, wait_limit: float, request_id: str = "", on_queued: Callable[[Turn], None] | None = None
    ) -> Turn:
        """Wait for the model's turn; 503 with Retry-After when it does not come within ``wait_limit``.

        ``on_queued`` sees the turn when it has to wait (so a client can be told where it stands).
        """
        turn = self.try_enter(model, request_id)
        if turn is not None:
            return turn
        self._seq += 1
        turn = Turn(self, model, self._seq, request_id)
        turn.future = asyncio.get_running_loop().create_future()
        turn.enqueued = time.monotonic()
        turn.position = self.position(turn)
        self._queues.setdefault(model, deque()).append(turn)
        self.waiting += 1
        if on_queued is not None:
            on_queued(turn)
        self._settle()
        try:
            async with asyncio.timeout(wait_limit):
                await turn.future
        except TimeoutError:
            if turn.future.done() and not turn.future.cancelled():
                return turn
            self._forget(turn)
            raise GatewayError(
                503,
                f"model '{model}' did not get its turn on this backend within {wait_limit:g}s",
                retry_after(self.expected_wait(turn)),
                reason="deadline",
            ) from None
        except asyncio.CancelledError:
            if turn.future.done() and not turn.future.cancelled():
                turn.release()
            else:
                self._forget(turn)
            raise
        return turn

    def fail_waiters(self, error: Callable[[], GatewayError]) -> int:
        """Answer every waiting request with a fresh ``error()`` (the gateway is stopping); return how many."""
        failed = 0
        for queue in self._queues.values():
            for turn in queue:
                if turn.future is not None and not turn.future.done():
                    turn.future.set_exception(error())
                    failed += 1
        self._queues.clear()
        self.waiting = 0
        return failed

    def _forget(self, turn: Turn) -> None:
        queue = self._queues.get(turn.model)
        if queue is not None and turn in queue:
            queue.remove(turn)
            self.waiting -= 1
            if not queue:
                del self._queues[turn.model]
        if turn.future is not None and not turn.future.done():
            turn.future.cancel()
        turn._gate = None
        self._settle()

    def _release(self, turn: Turn) -> None:
        self.leave(turn.model, turn.seq)

    def leave(self, model: str, seq: int) -> None:
        """A request let through has finished."""
        del self._holders[seq]
        resident = self.resident
        left = resident[model] - 1
        resident[model] = left
        if self.waiting and (not left or self.closing or self._due_changed(seq)):
            self._settle()

    def _due_changed(self, seq: int) -> bool:
        """A finished request that came before the oldest waiter brings that waiter nearer its FIFO turn."""
        oldest = self._oldest()
        return oldest is not None and oldest.due_since is None and seq < oldest.seq

    def _oldest(self) -> Turn | None:
        heads = [queue[0] for queue in self._queues.values() if queue]
        return min(heads, key=lambda turn: turn.seq) if heads else None

    def _let_through(self, model: str) -> None:
        queue = self._queues.pop(model, None)
        if not queue:
            return
        now = time.monotonic()
        count = self.resident.get(model, 0)
        for turn in queue:
            self.waiting -= 1
            if turn.future is None or turn.future.done():
                continue
            turn.waited = now - turn.enqueued
            self._holders[turn.seq] = None
            count += 1
            turn.future.set_result(None)
        self.resident[model] = count

    def _settle(self) -> None:
        """Let waiting groups through where they may go now, and watch the oldest waiter's bound."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closing:
            for model in [m for m in self._queues if m in self.resident]:
                self._let_through(model)  # newcomers held back while the groups were closed
        while self._queues:
            oldest = self._oldest()
            assert oldest is not None
            if oldest.model not in self.resident and not self._make_room():
                break
            self.closing = False
            self._let_through(oldest.model)
            for model in [m for m in self._queues if m in self.resident]:
                self._let_through(model)
        oldest = self._oldest()
        if oldest is None:
            self.closing = False
            return
        now = time.monotonic()
        if oldest.due_since is None:
            earlier = sum(1 for seq in self._holders if seq < oldest.seq)
            if earlier < self.capacity:
                oldest.due_since = now
        if oldest.due_since is not None and not self.closing:
            left = oldest.due_since + self.max_delay - now
            if left <= 0:
                self.closing = True
                self.overdue += 1
            else:
                self._timer = asyncio.get_running_loop().call_later(left, self._settle)

    # -- what a waiting client is told ------------------------------------------------------------

    def position(self, turn: Turn) -> int:
        """Requests served before ``turn``: every one let through and unfinished, then the groups
        whose oldest waiter came first, then the earlier waiters of its own model."""
        ahead = len(self._holders)
        own = turn.seq
        for model, queue in self._queues.items():
            if model == turn.model:
                ahead += sum(1 for t in queue if t.seq < own)
            elif queue and queue[0].seq < self._group_start(turn):
                ahead += len(queue)
        return ahead

    def _group_start(self, turn: Turn) -> int:
        queue = self._queues.get(turn.model)
        return queue[0].seq if queue else turn.seq

    def loads_ahead(self, turn: Turn) -> int:
        """Model switches before ``turn`` runs: one per group ahead of it, and its own."""
        start = self._group_start(turn)
        return 1 + sum(1 for m, q in self._queues.items() if m != turn.model and q and q[0].seq < start)

    def expected_wait(self, turn: Turn) -> float:
        if self.estimate is None:
            return 0.0
        return self.estimate(self.position(turn), self.loads_ahead(turn))
