"""Pre-warming, against the emulator: a pre-warm takes only what is free, and gives way to requests."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from ollama_asgi import OllamaGateway
from ollama_asgi.inference import ModelLifecycle
from ollama_asgi.specs import ApiKey
from ollama_asgi.testing import EmulatorServer
from tests.support.rawhttp import wait_until
from tests.support.server import ServerThread

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
    return (
        not lifecycle.loader.loading and not lifecycle.prewarmer.tasks and not lifecycle.models["backend-0"].in_flight
    )


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
