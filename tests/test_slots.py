"""The slots of each model's runner: the fair order of their queue, the backend's cap across models,
and the keys that name them (driven through ``Admission``, which queues requests for them)."""

from __future__ import annotations

import asyncio

import pytest

from ollama_asgi.admission import Admission
from ollama_asgi.errors import GatewayError
from ollama_asgi.slots import PoolKey


async def test_a_flood_from_one_principal_does_not_starve_another() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=1000)
    b0 = admission.slots_for("b0")
    order: list[str] = []
    held = await admission.admit(b0, kind="generate", principal="flood", wait_limit=1)

    async def job(principal: str) -> None:
        lease = await admission.admit(b0, kind="generate", principal=principal, wait_limit=10)
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
    b0 = admission.slots_for("b0")
    order: list[str] = []
    held = await admission.admit(b0, kind="generate", principal="x", wait_limit=1)

    async def job(principal: str, weight: float) -> None:
        lease = await admission.admit(b0, kind="generate", principal=principal, weight=weight, wait_limit=10)
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
    b0 = admission.slots_for("b0")
    order: list[str] = []
    held = await admission.admit(b0, kind="generate", principal="x", wait_limit=1)

    async def job(name: str, priority: int) -> None:
        lease = await admission.admit(b0, kind="generate", principal=name, priority=priority, wait_limit=10)
        order.append(name)
        lease.release()

    batch = [asyncio.ensure_future(job(f"batch{i}", 1)) for i in range(5)]
    await asyncio.sleep(0)
    interactive = asyncio.ensure_future(job("chat", 0))
    await asyncio.sleep(0)
    held.release()
    await asyncio.gather(interactive, *batch)
    assert order[0] == "chat"


async def test_a_freed_slot_is_refilled_without_delay() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=10)
    b0 = admission.slots_for("b0")
    held = await admission.admit(b0, kind="generate", principal="u", wait_limit=1)
    task = asyncio.ensure_future(admission.admit(b0, kind="generate", principal="v", wait_limit=5))
    await asyncio.sleep(0)
    held.release()
    pool = admission.pool(b0, "generate")
    assert pool.in_flight == 1 and pool.waiting == 0  # granted inside release(), before any await
    (await task).release()
    assert len(pool.refill_gaps) == 1


async def test_the_backend_cap_bounds_all_its_models_together() -> None:
    admission = Admission(parallel=2, embed_parallel=None, max_queue=10, backend_parallel=3)
    b0 = admission.slots_for("b0")
    leases = [
        await admission.admit(b0, kind="generate", principal="u", wait_limit=1, model=model)
        for model in ("a", "a", "b")
    ]
    with pytest.raises(GatewayError, match="no slot became free"):
        await admission.admit(b0, kind="generate", principal="u", wait_limit=0.05, model="b")
    assert admission.try_admit(b0, "generate", "c") is None
    leases[0].release()
    (await admission.admit(b0, kind="generate", principal="u", wait_limit=0.05, model="b")).release()
    for lease in leases[1:]:
        lease.release()


async def test_a_slot_freed_under_the_cap_goes_to_the_model_waiting_longest() -> None:
    admission = Admission(parallel=2, embed_parallel=None, max_queue=10, backend_parallel=2)
    b0 = admission.slots_for("b0")
    a1 = await admission.admit(b0, kind="generate", principal="u", wait_limit=1, model="a")
    a2 = await admission.admit(b0, kind="generate", principal="u", wait_limit=1, model="a")
    order: list[str] = []

    async def wait(model: str) -> None:
        lease = await admission.admit(b0, kind="generate", principal="u", wait_limit=5, model=model)
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


def test_pool_keys_keep_their_parts_apart_whatever_the_names_hold() -> None:
    admission = Admission(parallel=1, embed_parallel=2, max_queue=1)
    embed = admission.pool(admission.slots_for("a"), "embed")
    odd = admission.pool(admission.slots_for("a#embed"), "generate")
    assert embed is not odd
    assert embed.key == PoolKey("a", "", "embed") and odd.key == PoolKey("a#embed", "", "generate")
    assert embed.name != odd.name
    assert (embed.capacity, odd.capacity) == (2, 1)
