"""What a principal may do: the routes it may call, the models it may use and see, its rate limits.

Applied once a request is authenticated and parsed, before anything reaches Ollama; a refusal is
a ``GatewayError`` (401, 403 or 429) the gateway answers with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ollama_asgi.auth import Principal, model_allowed
from ollama_asgi.errors import GatewayError
from ollama_asgi.model_names import is_cloud_model
from ollama_asgi.protocol import ParsedRequest
from ollama_asgi.ratelimit import MemoryRateLimiter, rate_limit_headers
from ollama_asgi.routing import Kind, Route
from ollama_asgi.settings import Settings

if TYPE_CHECKING:
    from ollama_asgi.state.redis import RedisRateLimiter

__all__ = ["Policy"]

_LOGIN = [(b"www-authenticate", b'Bearer realm="ollama"')]


class Policy:
    """The gateway's rules for one principal, from its own limits and the settings."""

    def __init__(self, settings: Settings, rate_limiter: MemoryRateLimiter | RedisRateLimiter) -> None:
        self.settings = settings
        self.rate_limiter = rate_limiter

    @staticmethod
    def authorized(principal: Principal | None, route: Route) -> Principal:
        """The principal, when there is one and it may call ``route`` (model-store changes: admins only)."""
        if principal is None:
            raise GatewayError(401, "authentication required", _LOGIN)
        if route.kind is Kind.MANAGE and not principal.is_admin:
            raise GatewayError(403, f"{route.name} is restricted to administrators")
        return principal

    def check_route(self, principal: Principal, route: Route, path: str) -> None:
        """What ``route`` at ``path`` asks of ollama.com, refused unless this gateway allows it: the
        Ollama server's own account (``cloud_account_routes``), a cloud model's details (``cloud_models``)."""
        if route.account and not self.settings.cloud_account_routes:
            raise GatewayError(
                403,
                f"{route.name} acts as the Ollama server's ollama.com account, which this gateway does not "
                "allow (setting cloud_account_routes)",
            )
        if route.name == "openai_model" and is_cloud_model(name := path[11:]):
            # Ollama fetches a cloud model's details from ollama.com: the same policy applies.
            self.check_model(principal, ParsedRequest(body={}, model=name, stream=False, cloud=True))

    def check_model(self, principal: Principal, parsed: ParsedRequest) -> None:
        model = parsed.model
        if model is None:
            return
        if not model_allowed(principal.models, model) or not model_allowed(self.settings.allowed_models, model):
            raise GatewayError(
                403,
                f"model {model!r} is not allowed for {principal.display_name or principal.id}",
                reason="forbidden_model",
            )
        if parsed.cloud and not self.cloud_allowed(principal):
            # Ollama relays it to ollama.com: prompts would leave through a gateway taken for local.
            raise GatewayError(
                403,
                f"model {model!r} is a cloud model (run on ollama.com), which this gateway does not allow "
                "(setting cloud_models)",
                reason="forbidden_model",
            )

    def cloud_allowed(self, principal: Principal) -> bool:
        allowed = principal.cloud_models
        return self.settings.cloud_models if allowed is None else allowed

    def may_see(self, principal: Principal | None, model: str) -> bool:
        """Listings show a caller only the models it may use."""
        if principal is None:
            return True
        if is_cloud_model(model) and not self.cloud_allowed(principal):
            return False  # it would be refused: a listing must not offer it
        return model_allowed(principal.models, model) and model_allowed(self.settings.allowed_models, model)

    def rate_limited(self, principal: Principal) -> bool:
        """Some limit applies to ``principal`` (checked without a coroutine: most have none)."""
        return bool(
            principal.requests_per_minute
            or principal.tokens_per_minute
            or self.settings.rate_limit_rpm
            or self.settings.rate_limit_tpm
        )

    async def check_rate(self, principal: Principal) -> None:
        """Ask the rate limiter (only called when ``rate_limited``); 429 when over a limit."""
        rpm = principal.requests_per_minute or self.settings.rate_limit_rpm
        tpm = principal.tokens_per_minute or self.settings.rate_limit_tpm
        decision = await self.rate_limiter.check(principal.id, rpm, tpm)
        if decision is not None and not decision.allowed:
            raise GatewayError(
                429,
                f"rate limit exceeded: {decision.limit} {decision.kind} per minute for {principal.id}",
                rate_limit_headers(decision),
            )
