"""What happened to one request, recorded once when it ends: an access-log line and the metrics.

The gateway fills a ``RequestRecord`` as the request moves forward and ``Telemetry.end`` turns it
into one structured log line and one set of Prometheus observations. Nothing here runs per streamed
chunk: the request id header rides in the response head the relay sends anyway, and timings are two
clock reads. Telemetry is given the gateway's parts (``GatewayParts``), never the gateway itself,
which depends on it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING

from ollama_asgi.access_log import AccessLog
from ollama_asgi.auth import Authorizer, call_authorizer
from ollama_asgi.errors import GatewayError
from ollama_asgi.health import BackendWatch
from ollama_asgi.observed import GatewayParts
from ollama_asgi.record import RequestRecord, request_id_from
from ollama_asgi.responses import send_bytes
from ollama_asgi.status import StatusPage
from ollama_asgi.types import Scope, Send

if TYPE_CHECKING:  # an extra's module: imported when metrics are on (see Telemetry.__init__)
    from ollama_asgi.metrics import GatewayMetrics

__all__ = ["RequestRecord", "Telemetry"]

logger = logging.getLogger("ollama_asgi")


class Telemetry:
    """The gateway's operability: request records, access log, metrics, ``/_gateway/status``."""

    def __init__(self, parts: GatewayParts) -> None:
        settings = parts.settings
        self.settings = settings
        self.started_at = time.time()
        lifecycle = parts.lifecycle
        loader = lifecycle.loader if lifecycle is not None else None
        self.health = BackendWatch(parts.backends, changed=(lambda: loader.changes) if loader else (lambda: 0))
        self.access_log = AccessLog(log_prompts=settings.log_prompts)
        self.status_page = StatusPage(parts, self.health, self.started_at)
        self.metrics: GatewayMetrics | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        if settings.metrics_access != "off" or settings.metrics_port is not None:
            # Imported only here: prometheus-client is an extra, and a gateway without it still serves.
            try:
                from ollama_asgi.metrics import GatewayMetrics
            except ImportError:
                logger.warning(
                    "metrics are off: prometheus-client is not installed (pip install 'ollama-asgi[metrics]')"
                )
            else:
                self.metrics = GatewayMetrics(parts, self.health, self.started_at, lambda: self.loop)

    def begin(self, scope: Scope, loop: asyncio.AbstractEventLoop) -> RequestRecord:
        self.loop = loop  # the metrics port's thread checks backends on this loop
        return RequestRecord(request_id_from(scope), time.monotonic(), scope["method"])

    def end(self, record: RequestRecord) -> None:
        """Called once per request, from the gateway's ``finally``: log it and count it."""
        now = time.monotonic()
        status, reason, error = record.outcome(sys.exc_info()[1])
        if record.backend:
            if record.first_byte is not None:
                self.health.note(record.backend, True)
            elif reason == "upstream_unreachable":
                self.health.note(record.backend, False)
        usage = record.usage()
        if self.metrics is not None:
            self.metrics.observe(record, status, reason, now, usage)
        self.access_log.write(record, status, reason, error, now, usage)

    async def endpoint(self, name: str, scope: Scope, send: Send, record: RequestRecord, authorize: Authorizer) -> None:
        """``/_gateway/status`` (administrators) and ``/_gateway/metrics`` (as ``metrics_access`` says)."""
        access = "admin" if name == "status" else self.settings.metrics_access
        if access == "off":
            raise GatewayError(404, "404 page not found")
        if access == "admin":
            principal = record.principal = await call_authorizer(authorize, scope)
            if principal is None:
                raise GatewayError(401, "authentication required", [(b"www-authenticate", b'Bearer realm="ollama"')])
            if not principal.is_admin:
                raise GatewayError(403, f"{name} is restricted to administrators")
        head = scope["method"] == "HEAD"
        if name == "status":
            body, content_type, headers = await self.status_page.answer(scope)
            await send_bytes(send, 200, body, content_type, headers, head=head)
            return
        if self.metrics is None:
            raise GatewayError(501, "metrics need prometheus-client: pip install 'ollama-asgi[metrics]'")
        await self.health.refresh()
        body, content_type = self.metrics.render()
        await send_bytes(send, 200, body, content_type, [(b"cache-control", b"no-store")], head=head)

    async def aclose(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
