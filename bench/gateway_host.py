"""The gateway as teams run it: mounted at ``/llm`` in a Starlette host app.

Auth by API key, admission, ``num_ctx`` injection (lifecycle on) and metrics all on, as in a
deployment. The buckets start at Ollama's default context (4096) so that the gateway's choice for
the benchmark's small prompts matches what direct clients load and no target causes reloads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount

BENCH_KEY = "bench-key-0123456789"
ADMIN_KEY = "bench-admin-0123456789"


def build(upstream: str, *, parallel: int, max_queue: int, queue_timeout: float = 30.0) -> Any:
    from ollama_asgi import ApiKey, OllamaGateway, Settings

    settings = Settings(
        upstreams=(upstream,),
        auth="api_key",
        api_keys=(ApiKey.parse(f"bench={BENCH_KEY}"),),
        admin_api_keys=(ApiKey.parse(f"ops={ADMIN_KEY}", admin=True),),
        parallel=parallel,
        max_queue=max_queue,
        queue_timeout=queue_timeout,
        lifecycle=True,
        default_num_ctx=4096,
        num_ctx_buckets=(4096, 8192, 16384, 32768),
        metrics_access="admin",
        nvml=False,
    )
    extra = os.environ.get("BENCH_GATEWAY_SETTINGS")  # JSON overrides, for a setting's cost (bench.swap_trace)
    if extra:
        settings = dataclasses.replace(settings, **json.loads(extra))
    gateway = OllamaGateway(settings)
    return Starlette(routes=[Mount("/llm", app=gateway)], lifespan=gateway.lifespan)
