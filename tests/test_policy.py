"""What a principal may do, decided before anything reaches Ollama."""

from __future__ import annotations

import pytest

from ollama_asgi import Settings
from ollama_asgi.auth import Principal
from ollama_asgi.errors import GatewayError
from ollama_asgi.policy import Policy
from ollama_asgi.protocol import ParsedRequest
from ollama_asgi.ratelimit import MemoryRateLimiter
from ollama_asgi.routing import match_route


def _policy(**settings: object) -> Policy:
    return Policy(Settings(**settings), MemoryRateLimiter())  # type: ignore[arg-type]


def _route(path: str):  # type: ignore[no-untyped-def]
    route = match_route(path)
    assert route is not None
    return route


def test_a_request_without_a_principal_is_asked_to_log_in() -> None:
    with pytest.raises(GatewayError) as refused:
        Policy.authorized(None, _route("/api/chat"))
    assert refused.value.status == 401


def test_model_store_changes_are_for_administrators() -> None:
    with pytest.raises(GatewayError) as refused:
        Policy.authorized(Principal(id="user"), _route("/api/pull"))
    assert refused.value.status == 403
    admin = Principal(id="ops", is_admin=True)
    assert Policy.authorized(admin, _route("/api/pull")) is admin


def test_acting_as_the_servers_ollama_com_account_needs_the_setting() -> None:
    admin = Principal(id="ops", is_admin=True)
    with pytest.raises(GatewayError) as refused:
        _policy().check_route(admin, _route("/api/me"), "/api/me")
    assert refused.value.status == 403 and "cloud_account_routes" in refused.value.message
    _policy(cloud_account_routes=True).check_route(admin, _route("/api/me"), "/api/me")


def test_a_cloud_models_details_are_refused_like_the_model() -> None:
    path = "/v1/models/gpt-oss:120b-cloud"
    with pytest.raises(GatewayError) as refused:
        _policy(cloud_models=False).check_route(Principal(id="user"), _route(path), path)
    assert (refused.value.status, refused.value.reason) == (403, "forbidden_model")
    _policy(cloud_models=False).check_route(Principal(id="user"), _route("/v1/models/llama3.2"), "/v1/models/llama3.2")


def test_a_model_outside_the_principals_patterns_is_refused() -> None:
    policy = _policy()
    principal = Principal(id="user", models=("llama3*",))
    policy.check_model(principal, ParsedRequest(body={}, model="llama3.2", stream=False))
    with pytest.raises(GatewayError) as refused:
        policy.check_model(principal, ParsedRequest(body={}, model="qwen3", stream=False))
    assert (refused.value.status, refused.value.reason) == (403, "forbidden_model")


def test_listings_hide_cloud_models_from_a_principal_that_may_not_use_them() -> None:
    policy = _policy(cloud_models=False)
    assert not policy.may_see(Principal(id="user"), "gpt-oss:120b-cloud")
    assert policy.may_see(Principal(id="user", cloud_models=True), "gpt-oss:120b-cloud")
    assert policy.may_see(Principal(id="user"), "llama3.2")


async def test_past_its_requests_per_minute_a_principal_is_told_to_wait() -> None:
    policy = _policy()
    principal = Principal(id="user", requests_per_minute=1)
    assert policy.rate_limited(principal)
    await policy.check_rate(principal)
    with pytest.raises(GatewayError) as refused:
        await policy.check_rate(principal)
    assert refused.value.status == 429
