"""The plan stage: what a request becomes upstream, decided without a coroutine once the model is known."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ollama_asgi.auth import Principal
from ollama_asgi.backend import Backend
from ollama_asgi.catalog import Loaded, ModelInfo
from ollama_asgi.errors import GatewayError
from ollama_asgi.lifecycle import LoadState
from ollama_asgi.plan import Planner
from ollama_asgi.protocol import ParsedRequest
from ollama_asgi.routing import ROUTES
from ollama_asgi.settings import Settings

MODEL = ModelInfo("llama3.2:latest", 131072, ("completion",), 2_000_000_000)
USER, ADMIN = Principal("alice"), Principal("root", is_admin=True)
CHAT = ROUTES["/api/chat"]


def _planner(**settings: Any) -> tuple[Planner, Backend, dict[tuple[str, str], LoadState]]:
    configured = Settings(upstreams=("http://127.0.0.1:9",), **settings)
    backend = Backend.from_spec(configured.backends[0], configured)
    backend.models.info[MODEL.name] = MODEL
    loading: dict[tuple[str, str], LoadState] = {}
    return Planner(configured, {backend.name: backend}, loading), backend, loading


def _chat(**body: Any) -> ParsedRequest:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], **body}
    return ParsedRequest(body, "llama3.2", stream=bool(body.get("stream", True)))


def _sent(planner: Planner, backend: Backend, parsed: ParsedRequest, principal: Principal = USER) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(planner.prepare(CHAT, parsed, principal, backend.upstream, MODEL).body)
    return body


def test_the_gateways_keep_alive_replaces_a_callers_and_an_administrators_stands() -> None:
    planner, backend, _ = _planner(keep_alive="30m")
    assert _sent(planner, backend, _chat(keep_alive="1s"))["keep_alive"] == "30m"
    assert _sent(planner, backend, _chat())["keep_alive"] == "30m"
    assert _sent(planner, backend, _chat(keep_alive="1s"), ADMIN)["keep_alive"] == "1s"


def test_a_callers_runner_options_are_taken_out_and_an_administrators_kept() -> None:
    planner, backend, _ = _planner()
    options = {"num_gpu": 1, "num_batch": 8, "temperature": 0.5}
    sent = _sent(planner, backend, _chat(options=options))["options"]
    assert "num_gpu" not in sent and "num_batch" not in sent and sent["temperature"] == 0.5
    assert _sent(planner, backend, _chat(options=options), ADMIN)["options"]["num_gpu"] == 1


def test_num_ctx_is_the_smallest_bucket_that_fits_and_the_models_cap_bounds_it() -> None:
    planner, backend, _ = _planner(num_ctx_buckets=(4096, 8192), max_num_ctx=8192, num_predict_reserve=1024)
    prepared = planner.prepare(CHAT, _chat(), USER, backend.upstream, MODEL)
    assert prepared.num_ctx == 4096 and _sent(planner, backend, _chat())["options"]["num_ctx"] == 4096
    capped, _, _ = _planner(model_max_num_ctx=(("llama3.2", 2048),))
    assert capped.cap(MODEL) == 2048 and capped.default_bucket(MODEL) == 2048


async def test_a_request_is_cold_unless_its_model_is_loaded_at_its_size_or_on_its_way_in() -> None:
    planner, backend, loading = _planner(num_ctx_buckets=(4096,), max_num_ctx=4096)
    assert planner.prepare(CHAT, _chat(), USER, backend.upstream, MODEL).cold
    backend.models.loaded[MODEL.name] = Loaded(MODEL.name, 4096, MODEL.size, MODEL.size, float("inf"))
    assert not planner.prepare(CHAT, _chat(), USER, backend.upstream, MODEL).cold
    del backend.models.loaded[MODEL.name]
    loading[(backend.name, MODEL.name)] = LoadState(MODEL.name, 4096, 0.0)
    assert not planner.prepare(CHAT, _chat(), USER, backend.upstream, MODEL).cold


def test_unloading_with_keep_alive_0_is_an_administrators_alone() -> None:
    planner, backend, _ = _planner()
    unload = ParsedRequest({"model": "llama3.2", "keep_alive": 0}, "llama3.2", stream=False)
    with pytest.raises(GatewayError) as refused:
        planner.prepare(CHAT, unload, USER, backend.upstream, MODEL)
    assert refused.value.status == 403
    prepared = planner.prepare(CHAT, unload, ADMIN, backend.upstream, MODEL)
    assert prepared.load_only and prepared.num_ctx == 0
