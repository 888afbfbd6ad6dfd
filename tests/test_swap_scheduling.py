"""Swap-aware scheduling: a backend that holds fewer models than are wanted serves its queue grouped
by model, within a bound; and what a waiting client is told of its place."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest

from ollama_asgi.admission import Admission
from ollama_asgi.errors import GatewayError
from ollama_asgi.slots import BackendSlots, Lease
from ollama_asgi.testing import EmulatorServer
from tests.conftest import ADMIN, API_KEY, AUTH
from tests.support.rawhttp import RawResponse, request
from tests.support.server import ServerThread


def _admission(limit: int = 1, max_delay: float = 60.0, parallel: int = 1) -> Admission:
    admission = Admission(parallel=parallel, embed_parallel=None, max_queue=1000)
    admission.configure_turns(limit, max_delay)
    return admission


async def _take(
    admission: Admission, b0: BackendSlots, model: str, principal: str = "u", request_id: str = ""
) -> Lease:
    """What the gateway does for a request: the model's turn, then a slot."""
    turn = await admission.enter_turn(b0, model, 30, request_id, principal)
    lease = await admission.admit(b0, kind="generate", principal=principal, wait_limit=30, request_id=request_id)
    if turn is not None:
        lease.take_turn(turn)
    return lease


async def _served_order(admission: Admission, models: list[str], b0: BackendSlots | None = None) -> list[str]:
    """Queue ``models`` at once (in that order) on ``b0`` (a backend of its own by default) and return
    the order they were served in."""
    slots = b0 or admission.slots_for("b0")
    order: list[str] = []
    arrived = asyncio.Event()  # the first request runs until every other one has queued

    async def one(model: str) -> None:
        lease = await _take(admission, slots, model)
        order.append(model)
        await arrived.wait()
        lease.release()

    tasks = []
    for model in models:
        tasks.append(asyncio.ensure_future(one(model)))
        await asyncio.sleep(0)  # each queues before the next arrives
    arrived.set()
    await asyncio.gather(*tasks)
    return order


async def test_a_b_a_c_is_served_a_a_b_c() -> None:
    assert await _served_order(_admission(), ["A", "B", "A", "C"]) == ["A", "A", "B", "C"]


async def test_an_alternating_queue_switches_model_once() -> None:
    admission = _admission()
    b0 = admission.slots_for("b0")
    order = await _served_order(admission, ["A", "B"] * 20, b0)
    assert order == ["A"] * 20 + ["B"] * 20
    assert b0.turns is not None and b0.turns.switches == 1


async def test_groups_go_in_the_order_of_their_oldest_request() -> None:
    order = await _served_order(_admission(), ["A", "C", "B", "C", "B", "A"])
    assert order == ["A", "A", "C", "C", "B", "B"]


async def test_two_places_hold_two_groups_at_once() -> None:
    admission = _admission(limit=2)
    order = await _served_order(admission, ["A", "B", "C", "A", "B", "C"])
    assert sorted(order[:4]) == ["A", "A", "B", "B"] and order[4:] == ["C", "C"]


async def test_without_grouping_nothing_is_held_back() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=1000)
    b0 = admission.slots_for("b0")
    assert await _served_order(admission, ["A", "B", "A", "C"], b0) == ["A", "B", "A", "C"]
    assert b0.turns is None


async def _arrive(admission: Admission, b0: BackendSlots, model: str, arrivals: list[asyncio.Future[Lease]]) -> None:
    arrivals.append(asyncio.ensure_future(_take(admission, b0, model)))
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def _bounded_run(max_delay: float) -> list[str]:
    """A1 runs; B2 and A3 arrive; A1 ends; A4 arrives; then everything is served in turn."""
    admission = _admission(max_delay=max_delay)
    b0 = admission.slots_for("b0")
    arrivals: list[asyncio.Future[Lease]] = []
    order: list[str] = []
    first = await _take(admission, b0, "A")
    order.append("A1")
    await _arrive(admission, b0, "B", arrivals)
    await _arrive(admission, b0, "A", arrivals)
    first.release()
    await asyncio.sleep(0)
    await _arrive(admission, b0, "A", arrivals)
    names = ["B2", "A3", "A4"]
    pending = dict(zip(arrivals, names, strict=True))
    while pending:
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in sorted(done, key=lambda t: pending[t][1]):
            order.append(pending.pop(task))
            task.result().release()
            await asyncio.sleep(0)
    return order


async def test_a_request_passed_over_beyond_the_bound_closes_the_group_to_newcomers() -> None:
    # Within the bound, the A group takes its newcomer A4 ahead of B2; with a bound of 0, B2 is
    # overtaken only by A3, which had already been let through before B2's FIFO turn came.
    assert await _bounded_run(max_delay=60.0) == ["A1", "A3", "A4", "B2"]
    assert await _bounded_run(max_delay=0.0) == ["A1", "A3", "B2", "A4"]


async def test_a_waiter_gone_before_its_turn_leaves_no_trace() -> None:
    admission = _admission()
    b0 = admission.slots_for("b0")
    held = await _take(admission, b0, "A")
    waiting = asyncio.ensure_future(_take(admission, b0, "B"))
    await asyncio.sleep(0)
    gate = b0.turns
    assert gate is not None and gate.waiting == 1 and admission.queued(b0) == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert gate.waiting == 0
    held.release()
    assert gate.resident == {"A": 0}
    assert (await _served_order(admission, ["C"], b0)) == ["C"]
    assert list(gate.resident) == ["C"]


async def test_a_turn_that_never_comes_is_a_503_with_retry_after() -> None:
    admission = _admission()
    b0 = admission.slots_for("b0")
    held = await _take(admission, b0, "A")
    with pytest.raises(GatewayError) as info:
        await admission.enter_turn(b0, "B", 0.01)
    assert info.value.status == 503 and int(dict(info.value.headers)[b"retry-after"]) >= 1
    assert b0.turns is not None and b0.turns.waiting == 0
    held.release()


async def test_closing_fails_requests_waiting_for_their_turn() -> None:
    admission = _admission()
    b0 = admission.slots_for("b0")
    held = await _take(admission, b0, "A")
    waiting = asyncio.ensure_future(admission.enter_turn(b0, "B", 30))
    await asyncio.sleep(0)
    assert admission.close(lambda: GatewayError(503, "stopping"), [b0]) == 1
    with pytest.raises(GatewayError):
        await waiting
    held.release()


async def test_the_fast_path_takes_a_turn_where_grouping_is_on() -> None:
    assert not Admission(parallel=1, embed_parallel=None, max_queue=10).grouped
    grouped = _admission()
    b0 = grouped.slots_for("b0")
    assert grouped.grouped
    first = grouped.try_admit_turn(b0, "generate", "A")
    assert first is not None and b0.turns is not None and b0.turns.resident == {"A": 1}
    assert grouped.try_admit_turn(b0, "generate", "B") is None  # the slot is taken, and B is not A
    first.release()
    second = grouped.try_admit_turn(b0, "generate", "B")  # A has nothing left in flight: B takes its place
    assert second is not None and b0.turns is not None and list(b0.turns.resident) == ["B"]
    second.release()


async def test_a_pre_warm_never_takes_a_waiting_groups_place() -> None:
    admission = _admission()
    b0 = admission.slots_for("b0")
    held = await _take(admission, b0, "A")
    assert admission.may_prewarm(b0, "A")
    assert not admission.may_prewarm(b0, "B")
    held.release()
    assert not admission.may_prewarm(b0, "B")  # A stays loaded while no other model waits...
    two = _admission(limit=2)
    assert two.may_prewarm(two.slots_for("b0"), "B")  # ...but a free place may be warmed


# -- what a waiting client is told ------------------------------------------------------------------


async def test_position_in_the_fair_queue_follows_the_order_it_serves() -> None:
    admission = Admission(parallel=1, embed_parallel=None, max_queue=100)
    b0 = admission.slots_for("b0")
    held = await admission.admit(b0, kind="generate", principal="x", wait_limit=5)
    names = [("u", "u1"), ("u", "u2"), ("u", "u3"), ("v", "v1"), ("w", "w1")]
    tasks = {}
    for principal, rid in names:
        tasks[rid] = asyncio.ensure_future(
            admission.admit(b0, kind="generate", principal=principal, wait_limit=5, request_id=rid)
        )
        await asyncio.sleep(0)
    told = {rid: admission.describe(rid) for _, rid in names}
    positions = {rid: int(str(d["position"])) for rid, d in told.items() if d is not None}
    served: list[str] = []
    lease = held
    for _ in names:
        lease.release()
        await asyncio.sleep(0)
        rid = next(r for r, t in tasks.items() if t.done() and r not in served)
        served.append(rid)
        lease = tasks[rid].result()
    lease.release()
    assert sorted(positions, key=positions.__getitem__) == served
    assert sorted(positions.values()) == list(range(len(names)))


async def test_a_request_is_described_only_while_it_waits_and_only_to_its_principal() -> None:
    admission = _admission()
    b0 = admission.slots_for("b0")
    held = await _take(admission, b0, "A")
    waiting = asyncio.ensure_future(_take(admission, b0, "B", principal="u", request_id="r-1"))
    await asyncio.sleep(0)
    told = admission.describe("r-1", "u")
    assert told is not None and told["state"] == "waiting_for_model" and told["position"] == 1
    assert admission.describe("r-1", "someone else") is None
    held.release()
    lease = await waiting
    assert admission.describe("r-1") is None
    assert lease.turn is not None and lease.position == 1 and lease.queued_for > 0
    lease.release()


async def test_an_answer_that_never_queued_says_it_waited_nothing() -> None:
    admission = _admission()
    b0 = admission.slots_for("b0")
    lease = await _take(admission, b0, "A")
    assert lease.queued_for == 0.0 and lease.position == 0
    lease.release()


# -- through the gateway ---------------------------------------------------------------------------------


def _blocker(server: ServerThread, tokens: int = 20) -> RawResponse:
    """A streamed generation that holds the only slot while the test looks at what queues behind it."""
    body = json.dumps({"model": "llama3.2", "prompt": "b", "options": {"num_predict": tokens}}).encode()
    blocker = request(server.url + "/llm/api/generate", body=body, headers=AUTH)
    time.sleep(0.1)
    return blocker


def test_a_queued_openai_stream_is_told_its_place_in_sse_comments(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.05
    server = host_factory(parallel=1, sse_keepalive=0.1)
    blocker = _blocker(server)
    body = json.dumps({"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "k"}]}).encode()
    response = request(server.url + "/llm/v1/chat/completions", body=body, headers=AUTH)
    assert response.status == 200
    events = [e for c in response.chunks() for e in c.split(b"\n\n") if e]
    assert events[0].startswith(b": queued position=0 expected_wait="), events[0]
    assert b"state=waiting_for_slot" in events[0]
    assert events[-1] == b"data: [DONE]"
    blocker.chunks()


async def test_the_queue_endpoint_answers_the_waiting_requests_principal_and_admins_only(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.05
    server = host_factory(parallel=1, api_keys=(f"ci={API_KEY}", "other=other-key-456"))
    blocker = _blocker(server)
    base = server.url + "/llm"
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=30) as client:
        waiting = asyncio.ensure_future(
            client.post(
                "/api/generate",
                json={"model": "llama3.2", "prompt": "q", "stream": False},
                headers={"x-request-id": "queued-1"},
            )
        )
        await asyncio.sleep(0.2)
        mine = await client.get("/_gateway/queue/queued-1")
        admin = await client.get("/_gateway/queue/queued-1", headers=ADMIN)
        other = await client.get("/_gateway/queue/queued-1", headers={"Authorization": "Bearer other-key-456"})
        nobody = await client.get("/_gateway/queue/queued-1", headers={"Authorization": ""})
        unknown = await client.get("/_gateway/queue/no-such-request")
        answer = await waiting
        after = await client.get("/_gateway/queue/queued-1")
    blocker.chunks()
    assert mine.status_code == 200 and admin.status_code == 200
    told = mine.json()
    assert told["request_id"] == "queued-1" and told["state"] == "waiting_for_slot" and told["position"] == 0
    assert other.status_code == 404 and unknown.status_code == 404 and after.status_code == 404
    assert nobody.status_code == 401
    assert answer.status_code == 200
    assert answer.headers["x-queue-position"] == "0" and float(answer.headers["x-queue-wait"]) > 0


async def test_an_answer_that_found_a_free_slot_has_no_queue_headers(host: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=host.url + "/llm", headers=AUTH, timeout=30) as client:
        await client.post("/api/generate", json={"model": "llama3.2", "prompt": "warm", "stream": False})
        answer = await client.post("/api/generate", json={"model": "llama3.2", "prompt": "q", "stream": False})
    assert answer.status_code == 200
    assert "x-queue-wait" not in answer.headers and "x-queue-position" not in answer.headers


async def test_a_request_waiting_for_its_model_to_load_is_described_as_loading(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.load_base_seconds = 0.5
    server = host_factory()
    async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
        waiting = asyncio.ensure_future(
            client.post(
                "/api/generate",
                json={"model": "llama3.2", "prompt": "q", "stream": False},
                headers={"x-request-id": "cold-1"},
            )
        )
        await asyncio.sleep(0.2)
        told = await client.get("/_gateway/queue/cold-1")
        answer = await waiting
    assert told.status_code == 200, told.text
    assert told.json()["state"] == "loading_model" and told.json()["model"] == "llama3.2:latest"
    assert answer.status_code == 200
