"""The gateway's own answers: ``/_gateway/health``, ``/_gateway/queue/{request_id}``, ``/_gateway/backends``.

They read what the registry, the placement and the admission keep and never call Ollama
themselves; ``/_gateway/status`` and ``/_gateway/metrics`` are telemetry's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from ollama_asgi.admission import Admission
from ollama_asgi.auth import Authorizer, call_authorizer
from ollama_asgi.errors import GatewayError
from ollama_asgi.intake import read_body
from ollama_asgi.placement import Placement
from ollama_asgi.registry import BackendRegistry
from ollama_asgi.responses import send_bytes
from ollama_asgi.routing import route_path
from ollama_asgi.settings import Settings
from ollama_asgi.types import Receive, Scope, Send

if TYPE_CHECKING:
    from ollama_asgi.state.redis import RedisState

__all__ = ["GatewayEndpoints"]

_LOGIN = [(b"www-authenticate", b'Bearer realm="ollama"')]


class GatewayEndpoints:
    """Health for load balancers, a waiting request's place, and the administrators' backend control."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: BackendRegistry,
        placement: Placement,
        admission: Admission,
        shared: RedisState | None,
        authorize: Authorizer,
        retry_after: bytes,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._placement = placement
        self._admission = admission
        self._shared = shared
        self._authorize = authorize
        self._retry_after = retry_after

    async def health(self, scope: Scope, send: Send, *, shutting_down: bool) -> None:
        """``/_gateway/health`` for load balancers, from the state the gateway keeps.

        It needs no login, so it never calls Ollama itself: the placement's background probes (one
        per backend per ``health_interval``, however many ask) and the requests' own outcomes say
        which backends are up. ``ok`` (200): every backend in service is up with its breaker
        closed; ``degraded`` (200): some are not, requests go to the rest; ``unavailable`` (503,
        Retry-After): none can take a request, or Redis is down with ``redis_fail_open`` off;
        ``shutting_down`` (503). It names backends but not their URLs.
        """
        views = self._registry.views()
        if any(view.up is None for view in views):
            await self._placement.checked(within=2.5)  # a gateway's first moments: the first probes' answers
            views = self._registry.views()
        backends = []
        usable = in_service = 0
        for view in views:
            backends.append({"name": view.name, "up": view.up, "breaker": view.breaker, "draining": view.draining})
            if not view.draining:
                in_service += 1
                usable += bool(view.up and view.available)
        healthy = usable > 0 and not shutting_down
        status = "shutting_down" if shutting_down else "unavailable" if not healthy else "ok"
        if healthy and usable < in_service:
            status = "degraded"
        report: dict[str, object] = {"status": status, "backends": backends}
        shared = self._shared
        if shared is not None:
            report["redis"] = "up" if shared.healthy else "down"
            if not shared.healthy and not self._settings.redis_fail_open:
                healthy = False
                report["status"] = "unavailable"
        headers = [] if healthy else [(b"retry-after", self._retry_after)]
        await send_bytes(
            send, 200 if healthy else 503, orjson.dumps(report), headers=headers, head=scope["method"] == "HEAD"
        )

    async def queue(self, scope: Scope, send: Send) -> None:
        """Where a waiting request stands (``GET /_gateway/queue/{request_id}``), for its own principal
        or an administrator; any other caller, and a request not waiting, gets 404."""
        principal = await call_authorizer(self._authorize, scope)
        if principal is None:
            raise GatewayError(401, "authentication required", _LOGIN)
        request_id = route_path(scope).rsplit("/", 1)[-1]
        told = self._admission.describe(request_id, None if principal.is_admin else principal.id)
        if told is None:
            raise GatewayError(404, f"request {request_id!r} is not waiting in the queue")
        await send_bytes(send, 200, orjson.dumps(told))

    async def backends(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admin view and control of backends: list, add, remove, drain and undrain."""
        principal = await call_authorizer(self._authorize, scope)
        if principal is None:
            raise GatewayError(401, "authentication required", _LOGIN)
        if not principal.is_admin:
            raise GatewayError(403, "backends are managed by administrators", reason="forbidden")
        method = scope["method"]
        parts = route_path(scope).split("/")[3:]  # after /_gateway/backends
        name = parts[0] if parts else ""
        action = parts[1] if len(parts) > 1 else ""
        registry = self._registry
        if method == "POST" and action in ("drain", "undrain"):
            registry.drain(name, action == "drain")
        elif method == "POST" and not name:
            raw = await read_body(scope, receive, 64 * 1024)
            try:
                spec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise GatewayError(400, "expected a JSON object with at least a url") from None
            registry.add(spec)
        elif method == "DELETE" and name and not action:
            registry.remove(name)
        elif method != "GET" or action:
            raise GatewayError(405, "405 method not allowed")
        if method != "GET":
            await registry.publish()
        await send_bytes(send, 200, orjson.dumps({"backends": [view.listed() for view in registry.views()]}))
