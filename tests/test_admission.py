"""The one entry point to a backend's slots: capacity, the queue bound, deadlines, kinds and models."""

from __future__ import annotations

import asyncio

import pytest

from ollama_asgi.admission import Admission
from ollama_asgi.errors import GatewayError
from ollama_asgi.slots import Lease


async def test_requests_within_capacity_are_admitted_at_once() -> None:
    admission = Admission(parallel=2, embed_parallel=None, max_queue=10)
    b0 = admission.slots_for("b0")
    a = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    b = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    assert admission.pool(b0, "generate").in_flight == 2
    assert a.queued_for == b.queued_for == 0.0
    a.release()
    b.release()
    assert admission.pool(b0, "generate").in_flight == 0


async def test_never_more_than_parallel_in_flight() -> None:
    admission = Admission(parallel=2, embed_parallel=None, max_queue=100)
    b0 = admission.slots_for("b0")
    active = peak = 0

    async def job() -> None:
        nonlocal active, peak
        lease = await admission.admit(b0, kind="generate", principal="u", wait_limit=5)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.002)
        active -= 1
        lease.release()

    await asyncio.gather(*(job() for _ in range(50)))
    assert peak == 2
    assert admission.pool(b0, "generate").in_flight == 0


async def test_full_queue_answers_503_with_retry_after() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=2)
    b0 = admission.slots_for("b0")
    held = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    waiting = [
        asyncio.ensure_future(admission.admit(b0, kind="generate", principal="u", wait_limit=5)) for _ in range(2)
    ]
    await asyncio.sleep(0)
    with pytest.raises(GatewayError) as info:
        await admission.admit(b0, kind="generate", principal="u", wait_limit=5)
    assert info.value.status == 503
    assert int(dict(info.value.headers)[b"retry-after"]) >= 1
    held.release()
    for task in waiting:
        (await task).release()


async def test_deadline_passing_in_the_queue_answers_503_and_frees_the_place() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=5)
    b0 = admission.slots_for("b0")
    held = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    with pytest.raises(GatewayError) as info:
        await admission.admit(b0, kind="generate", principal="u", wait_limit=0.05)
    assert info.value.status == 503 and "within 0.05s" in info.value.message
    assert admission.queued(b0) == 0
    held.release()
    assert admission.pool(b0, "generate").in_flight == 0


async def test_cancelled_waiters_leave_the_queue_and_leak_no_slot() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=5)
    b0 = admission.slots_for("b0")
    held = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    task = asyncio.ensure_future(admission.admit(b0, kind="generate", principal="u", wait_limit=5))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert admission.queued(b0) == 0
    held.release()
    pool = admission.pool(b0, "generate")
    assert pool.in_flight == 0


async def test_embeddings_can_have_their_own_slots() -> None:
    admission = Admission(parallel=1, embed_parallel=4, max_queue=10)
    b0 = admission.slots_for("b0")
    gen = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    embeds: list[Lease] = [await admission.admit(b0, kind="embed", principal="u", wait_limit=0.05) for _ in range(4)]
    with pytest.raises(GatewayError):
        await admission.admit(b0, kind="generate", principal="u", wait_limit=0.05)
    for lease in (gen, *embeds):
        lease.release()


async def test_two_models_on_one_backend_each_have_their_own_slots() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=10)
    b0 = admission.slots_for("b0")
    tiny = await admission.admit(b0, kind="generate", principal="u", wait_limit=1, model="tiny:latest")
    loop = await admission.admit(b0, kind="generate", principal="u", wait_limit=0.05, model="loop:latest")
    with pytest.raises(GatewayError, match="no slot became free"):
        await admission.admit(b0, kind="generate", principal="u", wait_limit=0.05, model="tiny:latest")
    tiny.release()
    loop.release()


async def test_embeddings_take_their_models_slots_as_they_run_on_its_runner() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=10)
    b0 = admission.slots_for("b0")
    held = await admission.admit(b0, kind="generate", principal="u", wait_limit=1, model="m:latest")
    with pytest.raises(GatewayError, match="no slot became free"):
        await admission.admit(b0, kind="embed", principal="u", wait_limit=0.05, model="m:latest")
    held.release()


async def test_a_backend_named_with_a_hash_has_its_queue_bounded() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=1)
    gpu = admission.slots_for("gpu#1")
    held = await admission.admit(gpu, kind="generate", principal="u", wait_limit=1)
    waiting = asyncio.ensure_future(admission.admit(gpu, kind="generate", principal="u", wait_limit=5))
    await asyncio.sleep(0)
    assert admission.queued(gpu) == 1
    with pytest.raises(GatewayError, match="queue for this backend is full"):
        await admission.admit(gpu, kind="generate", principal="u", wait_limit=5)
    held.release()
    (await waiting).release()
