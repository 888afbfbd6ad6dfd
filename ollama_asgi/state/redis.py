"""Shared state in Redis: slot leases, queue places, rate-limit buckets, with fail-open fallback.

Slots are sorted-set members scored by their expiry; a worker renews the leases it holds every
third of the lease time, so a crashed worker's slots come back within ``lease_ttl``. Every script
reads the clock with Redis ``TIME``, so replicas on hosts with skewed clocks still agree.

When Redis cannot be reached the store reports itself unhealthy and raises ``StateUnavailable``;
the gateway then serves on its local limits (fail-open, the default) or answers 503 (fail-closed),
and a background probe reconnects as soon as Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson

from ollama_asgi.ratelimit import Decision
from ollama_asgi.state import LoadLock, StateUnavailable

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("Redis support needs the redis extra: pip install 'ollama-asgi[redis]'") from exc

__all__ = ["RedisLoadLock", "RedisRateLimiter", "RedisState"]

logger = logging.getLogger("ollama_asgi.state")

_NOW_MS = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

_ACQUIRE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 3)
  return 1
end
return 0
"""
)

_RENEW = (
    _NOW_MS
    + """
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 3)
return renewed
"""
)

_ENTER_QUEUE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 60000)
return 1
"""
)

# Token bucket: [level, stamp_ms]; returns {allowed, level*1000, retry_ms}.
_BUCKET = (
    _NOW_MS
    + """
local limit = tonumber(ARGV[1]); local cost = tonumber(ARGV[2]); local mode = ARGV[3]
local state = redis.call('HMGET', KEYS[1], 'level', 'stamp')
local level = tonumber(state[1]) or limit
local stamp = tonumber(state[2]) or now
level = math.min(limit, level + (now - stamp) * limit / 60000)
local rate = limit / 60000
local allowed = 1
local retry = 0
if mode == 'charge' then
  level = level - cost
elseif mode == 'positive' then
  if level <= 0 then allowed = 0; retry = (-level) / rate + 1 end
else
  if level >= cost or (cost > limit and level >= limit) then level = level - cost
  else allowed = 0; retry = (math.min(cost, limit) - level) / rate end
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'stamp', now)
redis.call('PEXPIRE', KEYS[1], 120000)
return {allowed, math.floor(level * 1000), math.ceil(retry)}
"""
)


class RedisState:
    """Slot leases and queue places shared through one Redis."""

    def __init__(self, url: str, *, prefix: str = "ollama-asgi", lease_ttl: float = 10.0) -> None:
        self.url = url
        self.prefix = prefix
        self.lease_ms = max(1000, int(lease_ttl * 1000))
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, Any] = {}
        self._held: dict[str, set[str]] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._healthy = True
        self._tasks: list[asyncio.Task[None]] = []
        self.last_error: str | None = None

    @property
    def healthy(self) -> bool:
        return self._healthy

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _ensure(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=0.5, socket_timeout=1.0, health_check_interval=5
            )
            self._loop = loop
            self._scripts = {
                name: self._client.register_script(body)
                for name, body in (
                    ("acquire", _ACQUIRE),
                    ("renew", _RENEW),
                    ("enter", _ENTER_QUEUE),
                    ("bucket", _BUCKET),
                )
            }
            self._tasks = [loop.create_task(self._heartbeat()), loop.create_task(self._listen())]
        return self._client

    async def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        self._ensure()
        if not self._healthy:
            raise StateUnavailable(self.last_error or "redis unavailable")
        try:
            return await self._scripts[script](keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
            raise StateUnavailable(str(exc)) from exc

    def _mark_down(self, exc: BaseException) -> None:
        if self._healthy:
            logger.error("redis at %s is unavailable, serving on local limits: %s", self.url, exc)
        self._healthy = False
        self.last_error = f"{exc.__class__.__name__}: {exc}"

    # -- slots ------------------------------------------------------------------------------------

    async def acquire(self, pool: str, capacity: int, holder: str) -> bool:
        granted = bool(await self._call("acquire", [self._key("slots", pool)], [capacity, self.lease_ms, holder]))
        if granted:
            self._held.setdefault(pool, set()).add(holder)
        return granted

    async def release(self, pool: str, holder: str) -> None:
        held = self._held.get(pool)
        if held is not None:
            held.discard(holder)
        if not self._healthy:
            return
        try:
            client = self._ensure()
            async with client.pipeline(transaction=False) as pipe:
                pipe.zrem(self._key("slots", pool), holder)
                pipe.publish(self._key("released"), pool)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._mark_down(exc)  # the lease expires on its own

    async def wait_release(self, pool: str, within: float) -> None:
        """Return when a slot of ``pool`` may have been freed anywhere, or after ``within`` seconds."""
        event = self._events.setdefault(pool, asyncio.Event())
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), within)
        except TimeoutError:
            pass

    # -- queue bound --------------------------------------------------------------------------------

    async def enter_queue(self, backend: str, waiter: str, limit: int, deadline: float) -> bool:
        ttl_ms = max(1000, int((deadline - time.monotonic()) * 1000) + 1000)
        return bool(await self._call("enter", [self._key("queue", backend)], [limit, ttl_ms, waiter]))

    async def leave_queue(self, backend: str, waiter: str) -> None:
        if not self._healthy:
            return
        try:
            await self._ensure().zrem(self._key("queue", backend), waiter)
        except (RedisError, OSError) as exc:
            self._mark_down(exc)

    # -- rate-limit buckets ---------------------------------------------------------------------------

    async def bucket(self, key: str, limit: int, cost: float, mode: str) -> tuple[bool, float, float]:
        allowed, level_milli, retry_ms = await self._call("bucket", [self._key("rl", key)], [limit, cost, mode])
        return bool(allowed), int(level_milli) / 1000.0, int(retry_ms) / 1000.0

    # -- shared documents (backend lists) -------------------------------------------------------------

    async def put_document(self, name: str, value: object) -> int:
        """Store ``value`` as the newest version of document ``name``; return that version."""
        client = self._ensure()
        if not self._healthy:
            raise StateUnavailable(self.last_error or "redis unavailable")
        try:
            version = int(await client.incr(self._key("doc", name, "version")))
            await client.set(self._key("doc", name), orjson.dumps({"version": version, "value": value}))
            return version
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
            raise StateUnavailable(str(exc)) from exc

    async def get_document(self, name: str, *, newer_than: int) -> tuple[int, Any] | None:
        client = self._ensure()
        if not self._healthy:
            raise StateUnavailable(self.last_error or "redis unavailable")
        try:
            raw = await client.get(self._key("doc", name))
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
            raise StateUnavailable(str(exc)) from exc
        if raw is None:
            return None
        data = orjson.loads(raw)
        return (int(data["version"]), data["value"]) if int(data["version"]) > newer_than else None

    # -- background ---------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Renew held leases; while Redis is down, probe it and come back when it answers."""
        interval = self.lease_ms / 3000.0
        while True:
            await asyncio.sleep(interval if self._healthy else 0.25)
            client = self._client
            try:
                if not self._healthy:
                    # Pooled connections to a restarted server fail once each on first use; drop them
                    # all, or the first requests after the comeback mark Redis down again and skip
                    # their lease releases (slots then stay taken until lease_ttl).
                    await client.connection_pool.disconnect()
                    await client.ping()
                    logger.warning("redis at %s is reachable again", self.url)
                    self._healthy = True
                    self.last_error = None
                for pool, holders in list(self._held.items()):
                    if holders:
                        await self._scripts["renew"](
                            keys=[self._key("slots", pool)], args=[self.lease_ms, *sorted(holders)]
                        )
            except (RedisError, OSError) as exc:
                self._mark_down(exc)
            except asyncio.CancelledError:
                raise

    async def _listen(self) -> None:
        """Wake local waiters when any worker releases a slot."""
        channel = self._key("released")
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        event = self._events.get(message["data"].decode())
                        if event is not None:
                            event.set()
            except (RedisError, OSError):
                await asyncio.sleep(0.25)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError, RuntimeError):
                    pass

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for pool, holders in list(self._held.items()):
            for holder in list(holders):
                await self.release(pool, holder)
        if self._client is not None:
            try:
                await self._client.aclose()
            except (RedisError, OSError, RuntimeError):
                pass
        self._client = None


class RedisRateLimiter:
    """The same token buckets as ``MemoryRateLimiter``, kept in Redis for all workers."""

    def __init__(self, state: RedisState, fallback: Any) -> None:
        self.state = state
        self.fallback = fallback  # local limiter used while Redis is unavailable

    async def check(self, key: str, rpm: int | None, tpm: int | None) -> Decision | None:
        try:
            decision = None
            if tpm:
                allowed, level, retry = await self.state.bucket(f"{key}:tokens", tpm, 0, "positive")
                if not allowed:
                    return Decision(False, tpm, 0, retry, (tpm - level) / (tpm / 60.0), "tokens")
            if rpm:
                allowed, level, retry = await self.state.bucket(f"{key}:requests", rpm, 1, "take")
                reset = (rpm - level) / (rpm / 60.0)
                decision = Decision(allowed, rpm, max(0, int(level)), 0.0 if allowed else retry, reset, "requests")
            return decision
        except StateUnavailable:
            result: Decision | None = await self.fallback.check(key, rpm, tpm)
            return result

    async def charge_tokens(self, key: str, tpm: int | None, tokens: int) -> None:
        if not tpm or tokens <= 0:
            return
        try:
            await self.state.bucket(f"{key}:tokens", tpm, tokens, "charge")
        except StateUnavailable:
            await self.fallback.charge_tokens(key, tpm, tokens)


_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLoadLock(LoadLock):
    """Single-flight model loads across workers: ``SET NX`` with a lease, released by its owner only."""

    def __init__(self, state: RedisState) -> None:
        self.state = state

    async def acquire(self, key: str, ttl: float) -> str | None:
        token = uuid.uuid4().hex
        client = self.state._ensure()
        if not self.state.healthy:
            raise StateUnavailable(self.state.last_error or "redis unavailable")
        try:
            ok = await client.set(self.state._key(key), token, nx=True, px=max(1000, int(ttl * 1000)))
        except (RedisError, OSError) as exc:
            self.state._mark_down(exc)
            raise StateUnavailable(str(exc)) from exc
        return token if ok else None

    async def release(self, key: str, token: str) -> None:
        client = self.state._ensure()
        try:
            await client.eval(_UNLOCK, 1, self.state._key(key), token)
        except (RedisError, OSError) as exc:
            self.state._mark_down(exc)
            raise StateUnavailable(str(exc)) from exc
