"""Conversation affinity: the key a conversation's turns share, the bounded map, and where a turn goes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping

import httpx
import pytest

from ollama_asgi import OllamaGateway
from ollama_asgi.affinity import PROMPT_WINDOW, Conversation, ConversationAffinity, conversation_key
from ollama_asgi.backend import Backend
from ollama_asgi.settings import Settings
from ollama_asgi.testing import EmulatorServer
from tests.conftest import AUTH, start_host
from tests.support.rawhttp import wait_until
from tests.support.server import ServerThread

SYSTEM = {"role": "system", "content": "You are terse."}
FIRST = {"role": "user", "content": "Why is the sky blue?"}
LATER = Conversation(b"c", continues=True)  # a turn with a history
FIRST_TURN = Conversation(b"k", continues=False)


def _key(body: Mapping[str, object], model: str = "m") -> bytes | None:
    found = conversation_key(body, model)
    return None if found is None else found.key


def _turn(n: int) -> list[dict[str, str]]:
    """The messages a client sends for turn ``n`` (1-based): the whole history, then the new question."""
    messages = [SYSTEM, FIRST]
    for i in range(1, n):
        messages += [{"role": "assistant", "content": f"answer {i}"}, {"role": "user", "content": f"question {i}"}]
    return messages


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    settings = Settings(upstreams=("http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"))
    made = [Backend.from_spec(spec, settings) for spec in settings.backends]
    yield made


# -- the key --------------------------------------------------------------------------------------------


def test_every_turn_of_a_chat_presents_the_same_key() -> None:
    keys = {_key({"messages": _turn(n)}, "medium") for n in range(1, 6)}
    assert len(keys) == 1 and None not in keys


def test_the_key_names_the_model_as_ollama_resolves_it() -> None:
    body = {"messages": _turn(2)}
    assert _key(body, "Medium") == _key(body, "medium:latest")
    assert _key(body, "medium") != _key(body, "tiny")


def test_another_system_prompt_or_first_question_is_another_conversation() -> None:
    key = _key({"messages": _turn(2)})
    other_system = [{"role": "system", "content": "You are verbose."}, *_turn(2)[1:]]
    other_question = [SYSTEM, {"role": "user", "content": "What is the weather?"}, *_turn(2)[2:]]
    assert _key({"messages": other_system}) != key
    assert _key({"messages": other_question}) != key


def test_conversations_under_one_long_system_prompt_are_told_apart_by_their_first_question() -> None:
    system = {"role": "system", "content": "the sky is blue " * 10_000}  # far longer than the hashed ends
    first, other = ({"messages": [system, {"role": "user", "content": q}]} for q in ("Why?", "What?"))
    assert _key(first) != _key(other)


def test_the_order_of_keys_in_a_clients_json_does_not_matter() -> None:
    reordered = [{"content": m["content"], "role": m["role"]} for m in _turn(3)]
    assert _key({"messages": reordered}) == _key({"messages": _turn(3)})


def test_a_top_level_system_prompt_is_part_of_the_key() -> None:
    messages = [FIRST]
    assert _key({"system": "a", "messages": messages}) != _key({"system": "b", "messages": messages})


def test_prompts_sharing_their_opening_window_share_a_key() -> None:
    opening = "x" * PROMPT_WINDOW
    assert _key({"prompt": opening + " first"}) == _key({"prompt": opening + " more"})


def test_a_turn_continues_a_conversation_once_it_carries_a_history() -> None:
    first, later = (conversation_key({"messages": _turn(n)}, "m") for n in (1, 2))
    assert first is not None and not first.continues
    assert later is not None and later.continues


def test_a_responses_api_conversation_is_keyed_by_its_instructions_and_first_input_message() -> None:
    first = {"instructions": "Be terse.", "input": [FIRST]}
    later = {"instructions": "Be terse.", "input": [FIRST, {"role": "assistant", "content": "a"}, FIRST]}
    assert _key(first) == _key(later) != _key({"instructions": "Be verbose.", "input": [FIRST]})


def test_a_short_prompt_or_a_body_without_one_is_no_conversation() -> None:
    assert conversation_key({"prompt": "hello"}, "m") is None
    assert conversation_key({"input": "embed me"}, "m") is None
    assert conversation_key({"input": ["embed me", "and me"]}, "m") is None
    assert conversation_key({"messages": []}, "m") is None


# -- the map --------------------------------------------------------------------------------------------


def test_the_map_remembers_the_backend_that_served_a_conversation_last() -> None:
    affinity = ConversationAffinity()
    affinity.served(b"c", "gpu0")
    affinity.served(b"c", "gpu1")
    assert affinity.recall(b"c") == "gpu1"
    assert affinity.recall(b"unknown") is None


def test_the_least_recently_served_conversation_leaves_a_full_map() -> None:
    affinity = ConversationAffinity(size=2)
    affinity.served(b"a", "gpu0")
    affinity.served(b"b", "gpu0")
    affinity.served(b"a", "gpu1")  # a is served again: b is now the oldest
    affinity.served(b"c", "gpu0")
    assert len(affinity) == 2
    assert affinity.recall(b"b") is None
    assert affinity.recall(b"a") == "gpu1" and affinity.recall(b"c") == "gpu0"


def test_a_conversation_idle_past_the_ttl_is_forgotten() -> None:
    clock = Clock()
    affinity = ConversationAffinity(ttl=60.0, clock=clock)
    affinity.served(b"a", "gpu0")
    clock.now += 59
    assert affinity.recall(b"a") == "gpu0"
    clock.now += 2
    assert affinity.recall(b"a") is None


def test_expired_entries_leave_when_new_ones_come() -> None:
    clock = Clock()
    affinity = ConversationAffinity(ttl=60.0, clock=clock)
    affinity.served(b"a", "gpu0")
    affinity.served(b"b", "gpu0")
    clock.now += 61
    affinity.served(b"c", "gpu1")
    assert len(affinity) == 1


# -- where a turn goes ----------------------------------------------------------------------------------


def test_a_turn_goes_back_to_its_backend_when_it_has_a_free_slot(backends: list[Backend]) -> None:
    affinity = ConversationAffinity()
    affinity.served(b"c", backends[2].name)
    assert affinity.choose(LATER, backends, backends, lambda b: 0.0) is backends[2]


def test_a_turn_queues_for_its_backend_when_the_extra_wait_is_within_the_bound(backends: list[Backend]) -> None:
    affinity = ConversationAffinity(max_extra_wait=3.0)
    affinity.served(b"c", backends[2].name)
    waits = {backends[0].name: 0.0, backends[1].name: 0.0, backends[2].name: 2.5}
    assert affinity.choose(LATER, backends, backends[:2], lambda b: waits[b.name]) is backends[2]


def test_a_turn_goes_elsewhere_when_its_backend_is_much_busier(backends: list[Backend]) -> None:
    affinity = ConversationAffinity(max_extra_wait=3.0)
    affinity.served(b"c", backends[2].name)
    waits = {backends[0].name: 0.0, backends[1].name: 1.0, backends[2].name: 3.5}
    assert affinity.choose(LATER, backends, backends[:1], lambda b: waits[b.name]) is None


def test_a_turn_goes_elsewhere_when_its_backend_no_longer_has_the_model(backends: list[Backend]) -> None:
    affinity = ConversationAffinity()
    affinity.served(b"c", backends[2].name)
    loaded = backends[:2]  # unloaded, unavailable or excluded there: placement leaves it out
    assert affinity.choose(LATER, loaded, [], lambda b: 5.0) is None


def test_a_first_turn_never_queues_for_a_busy_backend(backends: list[Backend]) -> None:
    affinity = ConversationAffinity(max_extra_wait=3.0)
    affinity.served(b"c", backends[2].name)  # the same opening, sent again as a new conversation
    waits = {backends[0].name: 0.0, backends[1].name: 0.0, backends[2].name: 0.5}
    turn = Conversation(b"c", continues=False)
    assert affinity.choose(turn, backends, backends[:2], lambda b: waits[b.name]) is None


def test_a_busy_backend_that_alone_has_the_model_is_left_to_placement(backends: list[Backend]) -> None:
    affinity = ConversationAffinity()
    affinity.served(b"c", backends[0].name)  # placement queues there, or spills to a second backend
    assert affinity.choose(LATER, backends[:1], [], lambda b: 1.0) is None


def test_a_new_conversation_goes_where_its_key_ranks_first_among_free_backends(backends: list[Backend]) -> None:
    affinity = ConversationAffinity()
    chosen = {affinity.choose(Conversation(bytes([i]), False), backends, backends, lambda b: 0.0) for i in range(40)}
    assert chosen == set(backends)  # spread over the copies, the same for every worker
    first = affinity.choose(FIRST_TURN, backends, backends, lambda b: 0.0)
    assert first is not None
    assert ConversationAffinity().choose(FIRST_TURN, backends, backends, lambda b: 0.0) is first


def test_a_new_conversation_whose_first_backend_is_busy_is_left_to_placement(backends: list[Backend]) -> None:
    affinity = ConversationAffinity()
    first = affinity.choose(FIRST_TURN, backends, backends, lambda b: 0.0)
    others = [b for b in backends if b is not first]
    assert affinity.choose(FIRST_TURN, backends, others, lambda b: 0.0 if b in others else 9.0) is None


# -- through the gateway, over two emulated backends that both hold the model ----------------------------


@pytest.fixture
def two() -> Iterator[list[EmulatorServer]]:
    servers = [EmulatorServer(token_interval=0.02).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def gateway_over(two: list[EmulatorServer]) -> Iterator[Callable[..., ServerThread]]:
    """The gateway in front of both backends, once each has the model loaded and the gateway knows it."""
    started: list[ServerThread] = []

    def start(**overrides: object) -> ServerThread:
        for server in two:  # loaded on both, as spill or copies leave a model
            httpx.post(server.url + "/api/generate", json={"model": "llama3.2", "keep_alive": "1h"}, timeout=10)
        upstreams = tuple({"url": s.url, "name": f"gpu{i}"} for i, s in enumerate(two))
        host = start_host(two[0].url, upstreams=upstreams, parallel=1, ps_interval=0.1, prewarm=False, **overrides)
        started.append(host)
        gateway = next(r.app for r in host.app.routes if isinstance(getattr(r, "app", None), OllamaGateway))
        backends = gateway.placement.backends
        httpx.post(host.url + "/llm/api/chat", json=_chat("warm up", 1), headers=AUTH, timeout=10)  # starts the polls
        wait_until(lambda: all(b.models.loaded_with("llama3.2") is not None for b in backends), timeout=10)
        return host

    yield start
    for host in started:
        host.stop()


def _chat(question: str, turn: int, tokens: int = 1) -> dict[str, object]:
    messages = [{"role": "user", "content": question}]
    for i in range(1, turn):
        messages += [{"role": "assistant", "content": f"answer {i}"}, {"role": "user", "content": f"more {i}"}]
    return {"model": "llama3.2", "messages": messages, "stream": False, "options": {"num_predict": tokens}}


async def _where_turns_land(two: list[EmulatorServer], host: ServerThread) -> dict[str, list[int]]:
    """Conversation a's first turn runs long, so b's first turn goes to the other backend; then each
    conversation's next turns come alone, when both backends are free."""
    landed: dict[str, list[int]] = {"a": [], "b": []}

    def completed() -> list[int]:
        return [s.emulator.stats.completed for s in two]

    async with httpx.AsyncClient(base_url=host.url + "/llm", headers=AUTH, timeout=30) as client:
        first_a = asyncio.ensure_future(client.post("/api/chat", json=_chat("question a", 1, tokens=40)))
        await asyncio.to_thread(wait_until, lambda: any(s.emulator.stats.active for s in two))
        landed["a"].append(next(i for i, s in enumerate(two) if s.emulator.stats.active))
        before = completed()
        assert (await client.post("/api/chat", json=_chat("question b", 1))).status_code == 200
        landed["b"].append(next(i for i, (n, m) in enumerate(zip(before, completed(), strict=True)) if m > n))
        assert (await first_a).status_code == 200
        for turn in (2, 3):
            for name in ("a", "b"):
                before = completed()
                assert (await client.post("/api/chat", json=_chat(f"question {name}", turn))).status_code == 200
                landed[name].append(next(i for i, (n, m) in enumerate(zip(before, completed(), strict=True)) if m > n))
    return landed


async def test_a_conversations_turns_land_on_the_backend_that_served_its_first(
    two: list[EmulatorServer], gateway_over: Callable[..., ServerThread]
) -> None:
    landed = await _where_turns_land(two, gateway_over())
    assert len(set(landed["a"])) == 1 and len(set(landed["b"])) == 1, landed
    assert landed["a"][0] != landed["b"][0]


async def test_without_conversation_affinity_a_conversations_turns_follow_the_models_home(
    two: list[EmulatorServer], gateway_over: Callable[..., ServerThread]
) -> None:
    landed = await _where_turns_land(two, gateway_over(conversation_affinity=False))
    away = landed["b"] if landed["a"][0] == landed["a"][1] else landed["a"]
    assert len(set(away)) == 2, landed  # the one that started away from home moved there: its cache left behind
