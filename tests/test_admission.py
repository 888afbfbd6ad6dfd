"""The fair queue in front of each backend's slots, exercised with real asyncio tasks."""

from __future__ import annotations

import asyncio
import math

import pytest

from ollama_asgi.admission import Admission, Lease, PoolKey
from ollama_asgi.errors import GatewayError


async def test_requests_within_capacity_are_admitted_at_once() -> None:
    admission = Admission(parallel=2, embed_parallel=None, max_queue=10)
    a = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    b = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    assert admission.pool("b0", "generate").in_flight == 2
    assert a.queued_for == b.queued_for == 0.0
    a.release()
    b.release()
    assert admission.pool("b0", "generate").in_flight == 0


async def test_never_more_than_parallel_in_flight() -> None:
    admission = Admission(parallel=2, embed_parallel=None, max_queue=100)
    active = peak = 0

    async def job() -> None:
        nonlocal active, peak
        lease = await admission.admit("b0", kind="generate", principal="u", wait_limit=5)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.002)
        active -= 1
        lease.release()

    await asyncio.gather(*(job() for _ in range(50)))
    assert peak == 2
    assert admission.pool("b0", "generate").in_flight == 0


async def test_full_queue_answers_503_with_retry_after() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=2)
    held = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    waiting = [
        asyncio.ensure_future(admission.admit("b0", kind="generate", principal="u", wait_limit=5)) for _ in range(2)
    ]
    await asyncio.sleep(0)
    with pytest.raises(GatewayError) as info:
        await admission.admit("b0", kind="generate", principal="u", wait_limit=5)
    assert info.value.status == 503
    assert int(dict(info.value.headers)[b"retry-after"]) >= 1
    held.release()
    for task in waiting:
        (await task).release()


async def test_deadline_passing_in_the_queue_answers_503_and_frees_the_place() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=5)
    held = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    with pytest.raises(GatewayError) as info:
        await admission.admit("b0", kind="generate", principal="u", wait_limit=0.05)
    assert info.value.status == 503 and "within 0.05s" in info.value.message
    assert admission.queued("b0") == 0
    held.release()
    assert admission.pool("b0", "generate").in_flight == 0


async def test_cancelled_waiters_leave_the_queue_and_leak_no_slot() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=5)
    held = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    task = asyncio.ensure_future(admission.admit("b0", kind="generate", principal="u", wait_limit=5))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert admission.queued("b0") == 0
    held.release()
    pool = admission.pool("b0", "generate")
    assert pool.in_flight == 0


async def test_a_flood_from_one_principal_does_not_starve_another() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=1000)
    order: list[str] = []
    held = await admission.admit("b0", kind="generate", principal="flood", wait_limit=1)

    async def job(principal: str) -> None:
        lease = await admission.admit("b0", kind="generate", principal=principal, wait_limit=10)
        order.append(principal)
        await asyncio.sleep(0)
        lease.release()

    flood = [asyncio.ensure_future(job("flood")) for _ in range(200)]
    await asyncio.sleep(0)
    single = asyncio.ensure_future(job("trickle"))
    await asyncio.sleep(0)
    held.release()
    await asyncio.gather(single, *flood)
    # The newcomer is served after at most one of the flooder's requests per slot.
    assert order.index("trickle") <= 1


async def test_weights_share_capacity_proportionally() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=1000)
    order: list[str] = []
    held = await admission.admit("b0", kind="generate", principal="x", wait_limit=1)

    async def job(principal: str, weight: float) -> None:
        lease = await admission.admit("b0", kind="generate", principal=principal, weight=weight, wait_limit=10)
        order.append(principal)
        await asyncio.sleep(0)
        lease.release()

    tasks = [asyncio.ensure_future(job("heavy", 3.0)) for _ in range(60)]
    tasks += [asyncio.ensure_future(job("light", 1.0)) for _ in range(60)]
    await asyncio.sleep(0)
    held.release()
    await asyncio.gather(*tasks)
    first = order[:40]
    assert first.count("heavy") == pytest.approx(30, abs=2)


async def test_interactive_work_is_served_before_batch() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=100)
    order: list[str] = []
    held = await admission.admit("b0", kind="generate", principal="x", wait_limit=1)

    async def job(name: str, priority: int) -> None:
        lease = await admission.admit("b0", kind="generate", principal=name, priority=priority, wait_limit=10)
        order.append(name)
        lease.release()

    batch = [asyncio.ensure_future(job(f"batch{i}", 1)) for i in range(5)]
    await asyncio.sleep(0)
    interactive = asyncio.ensure_future(job("chat", 0))
    await asyncio.sleep(0)
    held.release()
    await asyncio.gather(interactive, *batch)
    assert order[0] == "chat"


async def test_embeddings_can_have_their_own_slots() -> None:
    admission = Admission(parallel=1, embed_parallel=4, max_queue=10)
    gen = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    embeds: list[Lease] = [await admission.admit("b0", kind="embed", principal="u", wait_limit=0.05) for _ in range(4)]
    with pytest.raises(GatewayError):
        await admission.admit("b0", kind="generate", principal="u", wait_limit=0.05)
    for lease in (gen, *embeds):
        lease.release()


async def test_retry_after_follows_the_measured_service_time() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=3)
    for _ in range(3):
        lease = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
        await asyncio.sleep(0.3)
        lease.release()
    pool = admission.pool("b0", "generate")
    assert pool.service_time() == pytest.approx(0.3, abs=0.1)
    held = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    waiters = [
        asyncio.ensure_future(admission.admit("b0", kind="generate", principal="u", wait_limit=5)) for _ in range(3)
    ]
    await asyncio.sleep(0)
    for client in ("a", "b", "c", "d"):
        with pytest.raises(GatewayError) as info:
            await admission.admit("b0", kind="generate", principal="u", wait_limit=5, client=client)
    # 3 refused before it plus itself, a place freeing every 0.3 s on one slot: 1.2 s, rounded up to 2.
    assert dict(info.value.headers)[b"retry-after"] == b"2"
    held.release()
    for task in waiters:
        (await task).release()


async def test_a_freed_slot_is_refilled_without_delay() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=10)
    held = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    task = asyncio.ensure_future(admission.admit("b0", kind="generate", principal="v", wait_limit=5))
    await asyncio.sleep(0)
    held.release()
    pool = admission.pool("b0", "generate")
    assert pool.in_flight == 1 and pool.waiting == 0  # granted inside release(), before any await
    (await task).release()
    assert len(pool.refill_gaps) == 1


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_retry_after_is_a_turn_among_requesters_refused_earlier_as_places_free(monkeypatch: pytest.MonkeyPatch) -> None:
    import ollama_asgi.admission as admission_module

    clock = _Clock()
    monkeypatch.setattr(admission_module, "time", clock)
    pool = admission_module.Pool("b0", capacity=2)
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
    import ollama_asgi.admission as admission_module

    clock = _Clock()
    monkeypatch.setattr(admission_module, "time", clock)
    pool = admission_module.Pool("b0", capacity=1)
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
    import ollama_asgi.admission as admission_module

    clock = _Clock()
    monkeypatch.setattr(admission_module, "time", clock)
    admission = Admission(parallel=1, embed_parallel=None, max_queue=1)
    admission.pool("b0", "generate").clock.record(0.5)
    held = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    queued = asyncio.ensure_future(admission.admit("b0", kind="generate", principal="u", wait_limit=60))
    await asyncio.sleep(0)

    async def ask(client: str) -> GatewayError | Lease:
        try:
            return await asyncio.wait_for(
                admission.admit("b0", kind="generate", principal="u", wait_limit=60, client=client), 0.05
            )
        except GatewayError as refused:
            return refused
        except TimeoutError:  # queued: it waits for its slot
            return Lease(admission.pool("b0", "generate"), 0.0, 0.0)

    first = await ask("10.0.0.1")
    assert isinstance(first, GatewayError) and dict(first.headers)[b"retry-after"] == b"1"
    clock.now += 1.0  # it comes back as told; the queue is still full, but its place was kept
    assert isinstance(await ask("10.0.0.1"), Lease)
    queued.cancel()
    held.release()


async def test_a_place_kept_for_a_client_due_back_is_not_given_to_a_newcomer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ollama_asgi.admission as admission_module

    clock = _Clock()
    monkeypatch.setattr(admission_module, "time", clock)
    admission = Admission(parallel=1, embed_parallel=None, max_queue=3)
    pool = admission.pool("b0", "generate")
    pool.clock.record(0.5)
    held = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    queued = [
        asyncio.ensure_future(admission.admit("b0", kind="generate", principal="u", wait_limit=60)) for _ in range(2)
    ]
    await asyncio.sleep(0)
    pool.refusal_wait(3, ("u", "10.0.0.1"))  # refused while the queue was full: due back in 1 s
    clock.now += 1.0  # one place is free, and kept for it
    with pytest.raises(GatewayError, match="queue for this backend is full"):
        await admission.admit("b0", kind="generate", principal="u", wait_limit=5, client="10.0.0.2")
    for task in queued:
        task.cancel()
    held.release()


async def test_places_kept_for_clients_not_back_yet_never_leave_a_slot_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    import ollama_asgi.admission as admission_module

    clock = _Clock()
    monkeypatch.setattr(admission_module, "time", clock)
    admission = Admission(parallel=1, embed_parallel=None, max_queue=2)
    pool = admission.pool("b0", "generate")
    pool.clock.record(0.5)
    held = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    for host in ("10.0.0.1", "10.0.0.2"):
        pool.refusal_wait(2, ("u", host))  # both due back in 1 s
    clock.now += 1.0  # neither is back: the queue is empty, so a newcomer may wait for the slot
    waiting = asyncio.ensure_future(
        admission.admit("b0", kind="generate", principal="u", wait_limit=60, client="10.0.0.3")
    )
    await asyncio.sleep(0)
    assert admission.queued("b0") == 1
    held.release()
    (await waiting).release()


async def test_refusals_from_a_full_queue_advertise_a_growing_wait() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=1)
    held = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    await asyncio.sleep(0.2)
    held.release()
    held = await admission.admit("b0", kind="generate", principal="u", wait_limit=1)
    queued = asyncio.ensure_future(admission.admit("b0", kind="generate", principal="u", wait_limit=5))
    await asyncio.sleep(0)
    advised = []
    for client in range(12):
        with pytest.raises(GatewayError) as info:
            await admission.admit("b0", kind="generate", principal="u", wait_limit=5, client=f"10.0.0.{client}")
        advised.append(int(dict(info.value.headers)[b"retry-after"]))
    # About 0.2 s per answer on one slot: the first refused gets the next place to free (about
    # 0.2 s, shown as 1 s); the twelfth the one after the 11 refused before it (about 2.4 s).
    service = admission.pool("b0", "generate").service_time()
    assert advised[0] == math.ceil(service) == 1
    assert advised[-1] == math.ceil(12 * service) >= 3
    assert advised == sorted(advised)
    held.release()
    (await queued).release()


async def test_two_models_on_one_backend_each_have_their_own_slots() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=10)
    tiny = await admission.admit("b0", kind="generate", principal="u", wait_limit=1, model="tiny:latest")
    loop = await admission.admit("b0", kind="generate", principal="u", wait_limit=0.05, model="loop:latest")
    with pytest.raises(GatewayError, match="no slot became free"):
        await admission.admit("b0", kind="generate", principal="u", wait_limit=0.05, model="tiny:latest")
    tiny.release()
    loop.release()


async def test_embeddings_take_their_models_slots_as_they_run_on_its_runner() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=10)
    held = await admission.admit("b0", kind="generate", principal="u", wait_limit=1, model="m:latest")
    with pytest.raises(GatewayError, match="no slot became free"):
        await admission.admit("b0", kind="embed", principal="u", wait_limit=0.05, model="m:latest")
    held.release()


async def test_the_backend_cap_bounds_all_its_models_together() -> None:
    admission = Admission(parallel=2, embed_parallel=None, max_queue=10, backend_parallel=3)
    leases = [
        await admission.admit("b0", kind="generate", principal="u", wait_limit=1, model=model)
        for model in ("a", "a", "b")
    ]
    with pytest.raises(GatewayError, match="no slot became free"):
        await admission.admit("b0", kind="generate", principal="u", wait_limit=0.05, model="b")
    assert admission.try_admit("b0", "generate", "c") is None
    leases[0].release()
    (await admission.admit("b0", kind="generate", principal="u", wait_limit=0.05, model="b")).release()
    for lease in leases[1:]:
        lease.release()


async def test_a_slot_freed_under_the_cap_goes_to_the_model_waiting_longest() -> None:
    admission = Admission(parallel=2, embed_parallel=None, max_queue=10, backend_parallel=2)
    a1 = await admission.admit("b0", kind="generate", principal="u", wait_limit=1, model="a")
    a2 = await admission.admit("b0", kind="generate", principal="u", wait_limit=1, model="a")
    order: list[str] = []

    async def wait(model: str) -> None:
        lease = await admission.admit("b0", kind="generate", principal="u", wait_limit=5, model=model)
        order.append(model)
        lease.release()

    first = asyncio.ensure_future(wait("b"))  # b has free slots of its own but the cap holds it
    await asyncio.sleep(0)
    second = asyncio.ensure_future(wait("a"))
    await asyncio.sleep(0)
    a1.release()  # a's slot, under the cap: b waited longer
    await asyncio.gather(first, second)
    a2.release()
    assert order == ["b", "a"]


async def test_a_backend_named_with_a_hash_has_its_queue_bounded() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=1)
    held = await admission.admit("gpu#1", kind="generate", principal="u", wait_limit=1)
    waiting = asyncio.ensure_future(admission.admit("gpu#1", kind="generate", principal="u", wait_limit=5))
    await asyncio.sleep(0)
    assert admission.queued("gpu#1") == 1
    with pytest.raises(GatewayError, match="queue for this backend is full"):
        await admission.admit("gpu#1", kind="generate", principal="u", wait_limit=5)
    held.release()
    (await waiting).release()


def test_pool_keys_keep_their_parts_apart_whatever_the_names_hold() -> None:
    admission = Admission(parallel=1, embed_parallel=2, max_queue=1)
    embed = admission.pool("a", "embed")
    odd = admission.pool("a#embed", "generate")
    assert embed is not odd
    assert embed.key == PoolKey("a", "", "embed") and odd.key == PoolKey("a#embed", "", "generate")
    assert len({pool.name for pool in admission.pools.values()}) == 2
    assert (embed.capacity, odd.capacity) == (2, 1)
