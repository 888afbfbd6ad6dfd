from __future__ import annotations

from collections.abc import Callable

import httpx

from ollama_asgi import OllamaGateway
from ollama_asgi.inference import ModelLifecycle
from ollama_asgi.prewarm import TrafficModel
from ollama_asgi.specs import ApiKey
from ollama_asgi.testing import EmulatorServer
from tests.support.rawhttp import wait_until
from tests.support.server import ServerThread


def test_predicts_the_usual_next_model_once_seen_enough() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for model in ["embed", "chat"] * 3:
        traffic.observe(model, cold=False)
    prediction = traffic.predict("embed")
    assert prediction is not None and prediction.model == "chat" and prediction.confidence == 1.0


def test_no_prediction_below_the_confidence_threshold() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for model in ["a", "b", "a", "c", "a", "b", "a", "c"]:
        traffic.observe(model, cold=False)
    assert traffic.predict("a") is None  # b and c each half of the time


def test_no_prediction_without_enough_evidence() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=3)
    for model in ["a", "b", "a", "b"]:
        traffic.observe(model, cold=False)
    assert traffic.predict("a") is None  # a → b seen twice: not yet three times


def test_old_transitions_leave_the_window() -> None:
    traffic = TrafficModel(window=4, threshold=0.6, min_observations=2)
    for model in ["a", "b"] * 5 + ["a", "c"] * 5:
        traffic.observe(model, cold=False)
    prediction = traffic.predict("a")
    assert prediction is not None and prediction.model == "c"


def test_interleaved_principals_do_not_make_transitions_between_each_other() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for _ in range(4):  # alice goes a → b, bob goes c → d, their requests alternate
        traffic.observe("a", cold=False, principal="alice")
        traffic.observe("c", cold=False, principal="bob")
        traffic.observe("b", cold=False, principal="alice")
        traffic.observe("d", cold=False, principal="bob")
    alice, bob = traffic.predict("a", "alice"), traffic.predict("c", "bob")
    assert alice is not None and alice.model == "b" and alice.confidence == 1.0
    assert bob is not None and bob.model == "d" and bob.confidence == 1.0


def test_each_principal_gets_its_own_prediction_for_the_same_model() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for _ in range(3):
        for model in ("embed", "small"):
            traffic.observe(model, cold=False, principal="pipeline")
        for model in ("embed", "big"):
            traffic.observe(model, cold=False, principal="search")
    pipeline, search = traffic.predict("embed", "pipeline"), traffic.predict("embed", "search")
    assert pipeline is not None and pipeline.model == "small"
    assert search is not None and search.model == "big"


def test_a_principal_with_evidence_of_its_own_is_not_overruled_by_the_pool() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for principal in ("p1", "p2", "p3"):
        for model in ("a", "b") * 3:
            traffic.observe(model, cold=False, principal=principal)
    for model in ("a", "b", "a", "c", "a"):  # odd: half b, half c after a
        traffic.observe(model, cold=False, principal="odd")
    assert traffic.predict("a", "odd") is None  # its own evidence says unsure, whatever the others do


def test_a_new_principal_is_predicted_from_the_pool() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for principal in ("p1", "p2"):
        for model in ("embed", "chat"):
            traffic.observe(model, cold=False, principal=principal)
    traffic.observe("embed", cold=False, principal="newcomer")
    prediction = traffic.predict("embed", "newcomer")
    assert prediction is not None and prediction.model == "chat" and prediction.evidence == 2


def test_the_least_recent_principal_is_forgotten_past_the_cap() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2, max_principals=2)
    for model in ("a", "b") * 2:
        traffic.observe(model, cold=False, principal="old")
    for principal in ("p1", "p2"):
        traffic.observe("x", cold=False, principal=principal)
    assert traffic.principals == 2
    assert traffic.predict("a", "old") is None  # its transitions left the pool with it


def test_seeing_a_principal_again_keeps_it_tracked() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2, max_principals=2)
    for model in ("a", "b") * 2:
        traffic.observe(model, cold=False, principal="regular")
    traffic.observe("x", cold=False, principal="p1")
    traffic.observe("a", cold=False, principal="regular")
    traffic.observe("x", cold=False, principal="p2")  # p1 is now the least recent
    prediction = traffic.predict("a", "regular")
    assert prediction is not None and prediction.model == "b"


def test_next_uses_follow_each_principal_s_predicted_sequence() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for step, model in enumerate(["a", "b", "c"] * 3):  # one request every 10 s
        traffic.observe(model, cold=False, principal="pipeline", now=10.0 * step)
    uses = traffic.next_uses(now=80.0, steps=2)  # it just asked for c: a in 10 s, then b in 20 s
    assert uses == {"a": 10.0, "b": 20.0}


def test_a_principal_gone_quiet_expects_nothing() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for step, model in enumerate(["a", "b"] * 3):
        traffic.observe(model, cold=False, principal="pipeline", now=float(step))
    assert traffic.next_uses(now=5.0) != {}
    assert traffic.next_uses(now=5.0 + 100.0, idle_gaps=10.0, quiet_after=30.0) == {}


def test_the_soonest_of_several_principals_counts() -> None:
    traffic = TrafficModel(threshold=0.6, min_observations=2)
    for step in range(6):  # every 100 s, last at 500: m is due at 600
        traffic.observe(["m", "y"][step % 2], cold=False, principal="slow", now=100.0 * step)
    for step in range(6):  # every second, last at 595: m is due at 596
        traffic.observe(["m", "z"][step % 2], cold=False, principal="fast", now=590.0 + step)
    assert traffic.next_uses(now=595.0, steps=1)["m"] == 1.0


def test_hits_and_misses_are_counted() -> None:
    traffic = TrafficModel()
    traffic.observe("a", cold=True)
    traffic.warmed.add("b")
    traffic.observe("b", cold=False)
    assert (traffic.misses, traffic.hits) == (1, 1)


# -- against the emulator: a pre-warm takes only what is free, and gives way ---------------------------

A, B, C = "qwen2.5:0.5b", "qwen3:0.6b", "llama3.2:latest"
SECRETS = {"alice": "prewarm-key-alice", "bob": "prewarm-key-bob"}
KEYS = tuple(ApiKey.parse(f"{who}={secret}") for who, secret in SECRETS.items())


def _client(server: ServerThread, who: str) -> httpx.Client:
    key = SECRETS[who]
    return httpx.Client(base_url=server.url + "/llm", headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _ask(client: httpx.Client, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert client.post("/api/chat", json=body).status_code == 200


def _lifecycle(server: ServerThread) -> ModelLifecycle:
    gateway = next(r.app for r in server.app.routes if isinstance(getattr(r, "app", None), OllamaGateway))  # type: ignore[attr-defined]
    assert gateway.lifecycle is not None
    lifecycle: ModelLifecycle = gateway.lifecycle
    return lifecycle


def _settled(lifecycle: ModelLifecycle) -> bool:
    return not lifecycle.loader.loading and not lifecycle._prewarming and not lifecycle.models["backend-0"].in_flight


def test_a_pre_warm_never_evicts_a_loaded_model(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(api_keys=KEYS, max_loaded_models=2)
    lifecycle = _lifecycle(server)
    with _client(server, "alice") as alice, _client(server, "bob") as bob:
        for model in (A, B, A, B, A):  # alice goes from A to B
            _ask(alice, model)
        _ask(bob, C)  # the gateway evicts A or B for bob's request
        wait_until(lambda: _settled(lifecycle))
        kept = A if A in emulator.emulator.loaded_models() else B
        assert set(emulator.emulator.loaded_models()) == {kept, C}
        issued = lifecycle.backends[0].traffic.issued
        _ask(alice, kept)  # the other is predicted next, but only bob's C could make room for it
        wait_until(lambda: _settled(lifecycle))
    assert set(emulator.emulator.loaded_models()) == {kept, C}
    assert lifecycle.backends[0].traffic.issued == issued
    assert lifecycle.guard.evictions == 1  # bob's, none for a guess


def test_a_request_s_load_does_not_wait_behind_a_pre_warm(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(api_keys=KEYS, ps_interval=0.05)
    lifecycle = _lifecycle(server)
    with _client(server, "alice") as alice, _client(server, "bob") as bob:
        for model in (A, B, A, B):  # alice goes from A to B
            _ask(alice, model)
        httpx.post(emulator.url + "/api/generate", json={"model": B, "keep_alive": 0}).raise_for_status()
        wait_until(lambda: B not in lifecycle.models["backend-0"].loaded and _settled(lifecycle))
        emulator.emulator.load_base_seconds = 30.0  # every load from now on is slow
        emulator.emulator.clear()
        _ask(alice, A)  # loaded: B's pre-warm starts
        wait_until(lambda: any(r.loading and r.model.name == B for r in emulator.emulator.scheduler.loaded()))
        emulator.emulator.load_base_seconds = 0.0
        _ask(bob, C)  # needs the loader now: B's pre-warm gives it up
        assert B not in emulator.emulator.loaded_models()
    assert emulator.emulator.stats.aborted_loads == 1
    assert C in emulator.emulator.loaded_models()


def test_an_unused_pre_warmed_model_gives_its_place_to_a_request(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(api_keys=KEYS, max_loaded_models=2, ps_interval=0.05)
    lifecycle = _lifecycle(server)
    with _client(server, "alice") as alice, _client(server, "bob") as bob:
        for model in (A, B, A, B):  # alice goes from A to B
            _ask(alice, model)
        httpx.post(emulator.url + "/api/generate", json={"model": B, "keep_alive": 0}).raise_for_status()
        wait_until(lambda: B not in lifecycle.models["backend-0"].loaded and _settled(lifecycle))
        _ask(alice, A)  # B is pre-warmed into the free place
        wait_until(lambda: _settled(lifecycle) and B in lifecycle.models["backend-0"].loaded)
        _ask(bob, C)  # needs a place: the guess goes, A (which alice used) stays
        wait_until(lambda: _settled(lifecycle))
    assert set(emulator.emulator.loaded_models()) == {A, C}
    assert lifecycle.guard.evictions == 0


def test_a_request_makes_room_with_the_idle_model_no_principal_is_expected_to_need(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    server = host_factory(api_keys=(*KEYS, ApiKey.parse("carol=prewarm-key-carol")), max_loaded_models=3)
    lifecycle = _lifecycle(server)
    d = "all-minilm:latest"
    with _client(server, "alice") as alice, _client(server, "bob") as bob:
        carol = httpx.Client(
            base_url=server.url + "/llm", headers={"Authorization": "Bearer prewarm-key-carol"}, timeout=30
        )
        with carol:
            for _ in range(5):  # carol used D often (the VRAM guard alone would keep it), and only D
                assert carol.post("/api/embed", json={"model": d, "input": "x"}).status_code == 200
        for model in (A, B) * 3:  # alice goes on from B to A, and from A to B
            _ask(alice, model)
        wait_until(lambda: _settled(lifecycle))
        assert set(emulator.emulator.loaded_models()) == {A, B, d}
        _ask(bob, C)  # a place is needed: alice will want A and B again, nobody D
    assert set(emulator.emulator.loaded_models()) == {A, B, C}
