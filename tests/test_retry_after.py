"""What a refused client is told: a Retry-After that is its turn among those refused before it, and
the place kept for it when it comes back as told."""

from __future__ import annotations

import asyncio
import math

import pytest

from ollama_asgi import admission, retry_after, slots
from ollama_asgi.admission import Admission
from ollama_asgi.errors import GatewayError
from ollama_asgi.slots import Lease, Pool


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _frozen_clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    """A clock that moves only when the test moves it, for the slots, the advice and admission alike."""
    clock = _Clock()
    for module in (slots, retry_after, admission):
        monkeypatch.setattr(module, "time", clock)
    return clock


def test_retry_after_is_whole_seconds_rounded_up_and_never_zero() -> None:
    assert retry_after.retry_after(0.0) == [(b"retry-after", b"1")]
    assert retry_after.retry_after(1.2) == [(b"retry-after", b"2")]
    assert retry_after.retry_after(3.0) == [(b"retry-after", b"3")]


def test_an_answer_that_queued_tells_its_wait_and_the_requests_ahead_of_it() -> None:
    assert retry_after.queue_headers(0.25, 3) == [(b"x-queue-wait", b"0.250"), (b"x-queue-position", b"3")]


async def test_retry_after_follows_the_measured_service_time() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=3)
    b0 = admission.slots_for("b0")
    for _ in range(3):
        lease = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
        await asyncio.sleep(0.3)
        lease.release()
    pool = admission.pool(b0, "generate")
    assert pool.service_time() == pytest.approx(0.3, abs=0.1)
    held = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    waiters = [
        asyncio.ensure_future(admission.admit(b0, kind="generate", principal="u", wait_limit=5)) for _ in range(3)
    ]
    await asyncio.sleep(0)
    for client in ("a", "b", "c", "d"):
        with pytest.raises(GatewayError) as info:
            await admission.admit(b0, kind="generate", principal="u", wait_limit=5, client=client)
    # 3 refused before it plus itself, a place freeing every 0.3 s on one slot: 1.2 s, rounded up to 2.
    assert dict(info.value.headers)[b"retry-after"] == b"2"
    held.release()
    for task in waiters:
        (await task).release()


def test_retry_after_is_a_turn_among_requesters_refused_earlier_as_places_free(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _frozen_clock(monkeypatch)
    pool = Pool("b0", capacity=2)
    pool.clock.record(0.5)  # 0.5 s per answer on 2 slots: a queue place frees every 0.25 s
    # The first refused requester gets the next place to free, however long the queue is.
    assert pool.refusal_wait(4, ("key", "10.0.0.1")) == pytest.approx(0.25)
    # The next ones get the places after those promised before them.
    assert pool.refusal_wait(4, ("key", "10.0.0.2")) == pytest.approx(0.5)
    assert pool.refusal_wait(4, ("other-key", "10.0.0.1")) == pytest.approx(0.75)
    # Once the times given (whole seconds) and the grace after them have passed, they count no more.
    clock.now += 1.0 + 2.0 + 0.01
    assert pool.refusal_wait(4, ("key", "10.0.0.9")) == pytest.approx(0.25)
    # Without a requester, the queue alone counts, and nothing is remembered.
    clock.now += 4.0
    assert pool.refusal_wait(4) == pytest.approx(1.25)
    assert pool.refusal_wait(4) == pytest.approx(1.25)
    # A flood of distinct requesters cannot push the advice past ten minutes.
    pool.clock.record(60.0)
    for host in range(200):
        advice = pool.refusal_wait(4, ("key", f"10.9.0.{host}"))
    assert advice == 600.0


def test_a_requester_asking_again_before_its_time_is_told_the_time_left_and_keeps_its_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _frozen_clock(monkeypatch)
    pool = Pool("b0", capacity=1)
    pool.clock.record(1.0)
    assert pool.refusal_wait(3, ("u", "a")) == pytest.approx(1.0)  # told: come back in 1 s
    assert pool.refusal_wait(3, ("u", "b")) == pytest.approx(2.0)  # told: 2 s
    clock.now += 0.25
    for _ in range(5):  # polling changes neither its turn nor anyone else's
        assert pool.refusal_wait(3, ("u", "a")) == pytest.approx(0.75)
    assert pool.refusal_wait(3, ("u", "c")) == pytest.approx(3.0)


async def test_a_refused_client_that_comes_back_when_told_finds_its_place_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _frozen_clock(monkeypatch)
    admission = Admission(parallel=1, embed_parallel=None, max_queue=1)
    b0 = admission.slots_for("b0")
    admission.pool(b0, "generate").clock.record(0.5)
    held = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    queued = asyncio.ensure_future(admission.admit(b0, kind="generate", principal="u", wait_limit=60))
    await asyncio.sleep(0)

    async def ask(client: str) -> GatewayError | Lease:
        try:
            return await asyncio.wait_for(
                admission.admit(b0, kind="generate", principal="u", wait_limit=60, client=client), 0.05
            )
        except GatewayError as refused:
            return refused
        except TimeoutError:  # queued: it waits for its slot
            return Lease(admission.pool(b0, "generate"), 0.0, 0.0)

    first = await ask("10.0.0.1")
    assert isinstance(first, GatewayError) and dict(first.headers)[b"retry-after"] == b"1"
    clock.now += 1.0  # it comes back as told; the queue is still full, but its place was kept
    assert isinstance(await ask("10.0.0.1"), Lease)
    queued.cancel()
    held.release()


async def test_a_place_kept_for_a_client_due_back_is_not_given_to_a_newcomer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _frozen_clock(monkeypatch)
    admission = Admission(parallel=1, embed_parallel=None, max_queue=3)
    b0 = admission.slots_for("b0")
    pool = admission.pool(b0, "generate")
    pool.clock.record(0.5)
    held = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    queued = [
        asyncio.ensure_future(admission.admit(b0, kind="generate", principal="u", wait_limit=60)) for _ in range(2)
    ]
    await asyncio.sleep(0)
    pool.refusal_wait(3, ("u", "10.0.0.1"))  # refused while the queue was full: due back in 1 s
    clock.now += 1.0  # one place is free, and kept for it
    with pytest.raises(GatewayError, match="queue for this backend is full"):
        await admission.admit(b0, kind="generate", principal="u", wait_limit=5, client="10.0.0.2")
    for task in queued:
        task.cancel()
    held.release()


async def test_places_kept_for_clients_not_back_yet_never_leave_a_slot_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _frozen_clock(monkeypatch)
    admission = Admission(parallel=1, embed_parallel=None, max_queue=2)
    b0 = admission.slots_for("b0")
    pool = admission.pool(b0, "generate")
    pool.clock.record(0.5)
    held = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    for host in ("10.0.0.1", "10.0.0.2"):
        pool.refusal_wait(2, ("u", host))  # both due back in 1 s
    clock.now += 1.0  # neither is back: the queue is empty, so a newcomer may wait for the slot
    waiting = asyncio.ensure_future(
        admission.admit(b0, kind="generate", principal="u", wait_limit=60, client="10.0.0.3")
    )
    await asyncio.sleep(0)
    assert admission.queued(b0) == 1
    held.release()
    (await waiting).release()


async def test_refusals_from_a_full_queue_advertise_a_growing_wait() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=1)
    b0 = admission.slots_for("b0")
    held = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    await asyncio.sleep(0.2)
    held.release()
    held = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    queued = asyncio.ensure_future(admission.admit(b0, kind="generate", principal="u", wait_limit=5))
    await asyncio.sleep(0)
    advised = []
    for client in range(12):
        with pytest.raises(GatewayError) as info:
            await admission.admit(b0, kind="generate", principal="u", wait_limit=5, client=f"10.0.0.{client}")
        advised.append(int(dict(info.value.headers)[b"retry-after"]))
    # About 0.2 s per answer on one slot: the first refused gets the next place to free (about
    # 0.2 s, shown as 1 s); the twelfth the one after the 11 refused before it (about 2.4 s).
    service = admission.pool(b0, "generate").service_time()
    assert advised[0] == math.ceil(service) == 1
    assert advised[-1] == math.ceil(12 * service) >= 3
    assert advised == sorted(advised)
    held.release()
    (await queued).release()
