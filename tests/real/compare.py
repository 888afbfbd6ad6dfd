"""How the client tests compare an answer from Ollama itself with the same call through the gateway.

Each client is made twice, once for the real server's own URL and once for the gateway at /llm with
the API key, and the two answers must be equal once what differs on every call (times, durations,
generated ids) is taken out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel

from ollama_asgi import OllamaGateway, Settings
from ollama_asgi.testing.real import RealOllama
from tests.conftest import ADMIN_KEY, API_KEY
from tests.support.hosts import starlette_host
from tests.support.server import ServerThread

R = TypeVar("R")

AUTH = {"Authorization": f"Bearer {API_KEY}"}
HI = [{"role": "user", "content": "hi"}]
SENTENCE = "The quick brown fox jumps over the lazy dog."  # what the tiny model always answers
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

# Different on every call whoever answers: clocks, durations, ids Ollama or a client makes up.
VARYING = frozenset(
    {
        "created_at",
        "created",
        "id",
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
        "expires_at",
    }
)


class Pair(NamedTuple):
    """The same client twice: talking to Ollama directly, and through the gateway."""

    direct: Any
    gateway: Any

    def each(self, call: Callable[[Any], R]) -> tuple[R, R]:
        """The call made with the direct client first, then with the gateway's."""
        return call(self.direct), call(self.gateway)


def stable(value: Any) -> Any:
    """A client's answer as plain data, less what differs on every call (see ``VARYING``)."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list | tuple):
        return [stable(v) for v in value]
    return value


@contextmanager
def gateway_url(server: RealOllama, **overrides: Any) -> Iterator[str]:
    """The gateway at /llm of a Starlette host in front of ``server``, for a whole test module.

    Its context buckets start at the server's own default (4096), so direct and gateway calls share
    one load of each model instead of reloading it at every switch.
    """
    options: dict[str, Any] = {
        "upstreams": (server.url,),
        "api_keys": (f"ci={API_KEY}",),
        "admin_api_keys": (f"ops={ADMIN_KEY}",),
        "num_ctx_buckets": (4096, 8192, 16384, 32768),
    }
    options.update(overrides)
    host = ServerThread(starlette_host(OllamaGateway(Settings.from_mapping(options)))).start()
    try:
        yield host.url + "/llm"
    finally:
        host.stop()
