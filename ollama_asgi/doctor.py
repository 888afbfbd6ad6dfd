"""``ollama-asgi doctor``: check a deployment's settings, upstreams, Redis and GPUs before it serves.

Each check ends as ok, warn or FAIL. A failure is something the gateway cannot work around (bad
settings, an upstream it cannot reach, a configured Redis that is down) and makes the command exit
1; a warning is worth knowing but not fatal (no GPU library, no models pulled yet).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import orjson

from ollama_asgi.errors import ConfigError
from ollama_asgi.settings import Settings
from ollama_asgi.upstream import Upstream, UpstreamError

__all__ = ["Check", "run_checks", "run_doctor"]

Outcome = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    outcome: Outcome
    detail: str


async def _get_json(upstream: Upstream, path: str, within: float) -> Any:
    async with asyncio.timeout(within):
        resp = await upstream.open("GET", path)
        async with resp:
            body = await resp.read()
    if resp.status != 200:
        raise UpstreamError("protocol", f"GET {path} answered {resp.status}")
    return orjson.loads(body)


async def _check_upstream(index: int, url: str, within: float) -> Check:
    name = f"upstream backend-{index}"
    upstream = Upstream(url, connect_timeout=within, read_timeout=within, name=f"backend-{index}")
    try:
        version = (await _get_json(upstream, "/api/version", within)).get("version", "?")
        models = [m.get("name", "?") for m in (await _get_json(upstream, "/api/tags", within)).get("models") or []]
    except TimeoutError:
        return Check(name, "FAIL", f"{url}: no answer within {within:g}s")
    except (UpstreamError, orjson.JSONDecodeError, AttributeError) as exc:
        return Check(name, "FAIL", f"{url}: {exc}")
    finally:
        await upstream.aclose()
    if not models:
        return Check(name, "warn", f"{url}: Ollama {version}, no models pulled")
    shown = ", ".join(models[:5]) + (f" and {len(models) - 5} more" if len(models) > 5 else "")
    return Check(name, "ok", f"{url}: Ollama {version}, {len(models)} model(s): {shown}")


async def _check_redis(url: str, within: float) -> Check:
    try:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError
    except ImportError:
        return Check(
            "redis", "FAIL", "redis_url is set but the redis package is missing: pip install 'ollama-asgi[redis]'"
        )
    client = aioredis.Redis.from_url(url, socket_timeout=within, socket_connect_timeout=within)
    try:
        await client.ping()
        info = await client.info("server")
        return Check("redis", "ok", f"{_redact(url)}: Redis {info.get('redis_version', '?')}")
    except (RedisError, OSError) as exc:
        return Check("redis", "FAIL", f"{_redact(url)}: {exc}")
    finally:
        await client.aclose()


def _redact(url: str) -> str:
    """The URL without its password, fit for a terminal or a CI log."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


def _check_nvml() -> Check:
    try:
        import pynvml
    except ImportError:
        return Check("gpu (nvml)", "warn", "nvidia-ml-py is not installed (pip install 'ollama-asgi[nvml]')")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return Check("gpu (nvml)", "warn", f"no NVIDIA GPU or driver: {exc}")
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = name.decode() if isinstance(name, bytes) else name
            devices.append(f"{i}: {name} ({memory.used / 2**30:.1f} of {memory.total / 2**30:.1f} GiB used)")
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
    except pynvml.NVMLError as exc:
        return Check("gpu (nvml)", "warn", f"NVML answered with an error: {exc}")
    finally:
        pynvml.nvmlShutdown()
    if not devices:
        return Check("gpu (nvml)", "warn", f"driver {driver}, no GPU visible")
    return Check("gpu (nvml)", "ok", f"driver {driver}; " + "; ".join(devices))


def _check_metrics(settings: Settings) -> Check:
    if settings.metrics_access == "off" and settings.metrics_port is None:
        return Check("metrics", "ok", "off")
    try:
        version = importlib.metadata.version("prometheus-client")
    except importlib.metadata.PackageNotFoundError:
        return Check("metrics", "warn", "prometheus-client is not installed: pip install 'ollama-asgi[metrics]'")
    multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc and not os.path.isdir(multiproc):
        return Check("metrics", "FAIL", f"PROMETHEUS_MULTIPROC_DIR={multiproc} is not a directory")
    where = f"/_gateway/metrics ({settings.metrics_access})"
    if settings.metrics_port is not None:
        where += f" and {settings.metrics_host}:{settings.metrics_port}"
    mode = f"multiprocess mode in {multiproc}" if multiproc else f"{settings.metrics_registry} registry"
    return Check("metrics", "ok", f"prometheus-client {version}: {where}, {mode}")


def _check_settings(settings: Settings) -> list[Check]:
    keys = len(settings.api_keys) + len(settings.admin_api_keys)
    summary = (
        f"{len(settings.upstreams)} upstream(s), auth={settings.auth}, {keys} API key(s), "
        f"parallel={settings.parallel}, max_queue={settings.max_queue}, "
        f"state={'redis' if settings.redis_url else 'in-memory'}"
    )
    checks = [Check("settings", "ok", summary)]
    if settings.auth == "none":
        checks.append(Check("auth", "warn", "auth=none: every caller is an anonymous principal"))
    elif settings.auth == "api_key" and not keys:
        checks.append(Check("auth", "warn", "auth=api_key but no API keys are configured: nobody can get in"))
    return checks


async def run_checks(environ: Mapping[str, str] | None = None, *, within: float = 3.0) -> list[Check]:
    """Every check, in order; settings come from ``OLLAMA_ASGI_*`` in ``environ``."""
    try:
        settings = Settings.from_env(environ=environ)
    except ConfigError as exc:
        return [Check("settings", "FAIL", str(exc))]
    checks = _check_settings(settings)
    probes: list[Any] = [_check_upstream(i, url, within) for i, url in enumerate(settings.upstreams)]
    if settings.redis_url:
        probes.append(_check_redis(settings.redis_url, within))
    checks.extend(await asyncio.gather(*probes))
    if settings.nvml:
        checks.append(_check_nvml())
    checks.append(_check_metrics(settings))
    return checks


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'CHECK'.ljust(width)}  RESULT  DETAIL"]
    lines += [f"{c.name.ljust(width)}  {c.outcome.ljust(6)}  {c.detail}" for c in checks]
    return "\n".join(lines)


def run_doctor(*, timeout: float = 3.0, out: TextIO | None = None) -> int:
    """Print the table; 0 when nothing failed, 1 otherwise."""
    checks = asyncio.run(run_checks(within=timeout))
    stream = out or sys.stdout
    print(format_table(checks), file=stream)
    failed = [c for c in checks if c.outcome == "FAIL"]
    warned = [c for c in checks if c.outcome == "warn"]
    verdict = f"{len(failed)} failed" if failed else "all required checks passed"
    print(f"\n{verdict}, {len(warned)} warning(s)", file=stream)
    return 1 if failed else 0
