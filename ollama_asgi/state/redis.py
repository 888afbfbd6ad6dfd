"""Shared state in Redis: slot leases, queue places, rate-limit buckets, with fail-open fallback.

Slots are sorted-set members scored by their expiry; a worker renews the leases it holds every
third of the lease time, so a crashed worker's slots come back within ``lease_ttl``. Every script
reads the clock with Redis ``TIME``, so replicas on hosts with skewed clocks still agree.

Each request costs one round trip to take its slot and one to give it back: taking a slot, entering
the queue bound when none is free and leaving it when one is granted are one script, and a release
wakes other workers (a publish) only while some worker waits for that backend. Commands wait for a
free connection of a bounded pool: a busy pool is a wait, never a reason to fall back to local limits.

When Redis cannot be reached the store reports itself unhealthy and raises ``StateUnavailable``;
the gateway then serves on its local limits (fail-open, the default) or answers 503 (fail-closed),
and a background probe reconnects as soon as Redis answers again.

The module is long because the Lua scripts each operation runs in Redis are written out here,
beside the Python that calls them: a script and its caller change together.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson

from ollama_asgi.ratelimit import Decision
from ollama_asgi.state import LoadLock, QueuePlace, StateUnavailable

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("Redis support needs the redis extra: pip install 'ollama-asgi[redis]'") from exc

__all__ = ["RedisLoadLock", "RedisRateLimiter", "RedisState"]

logger = logging.getLogger("ollama_asgi.state")

_NOW_MS = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS: the pool's slots, the backend's slots (its cap), the backend's waiting workers, its queue.
# ARGV: capacity, lease ms, holder, backend cap (0: none), worker, queue place to enter ('' none),
# queue limit, place ttl ms, queue place to leave once granted ('' none).
# Returns 1 (granted), 0 (not granted; the place entered if asked) or -1 (not granted, queue full).
# A refused worker is listed as waiting for the backend (releases then publish) until a take of its
# own is granted or two seconds pass.
_ACQUIRE = (
    _NOW_MS
    + """
local lease = tonumber(ARGV[2]); local cap = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local free = redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1])
if free and cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  free = redis.call('ZCARD', KEYS[2]) < cap
end
if free then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], lease * 3)
  if cap > 0 then
    redis.call('ZADD', KEYS[2], now + lease, ARGV[3])
    redis.call('PEXPIRE', KEYS[2], lease * 3)
  end
  if ARGV[9] ~= '' then redis.call('ZREM', KEYS[4], ARGV[9]) end
  redis.call('ZREM', KEYS[3], ARGV[5])
  return 1
end
redis.call('ZADD', KEYS[3], now + 2000, ARGV[5])
redis.call('PEXPIRE', KEYS[3], 4000)
if ARGV[6] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[7]) then return -1 end
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[8]), ARGV[6])
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[8]) + 60000)
end
return 0
"""
)

# KEYS: the pool's slots, the backend's slots, its waiting workers, the wake-up channel. ARGV: holder,
# backend name. Publishes only while a worker waits for that backend.
_RELEASE = (
    _NOW_MS
    + """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) > 0 then redis.call('PUBLISH', KEYS[4], ARGV[2]) end
return removed
"""
)

# KEYS: the slot sets the holders are in (a pool's, and its backend's where capped).
_RENEW = (
    _NOW_MS
    + """
local renewed = 0
for k = 1, #KEYS do
  for i = 2, #ARGV do
    renewed = renewed + redis.call('ZADD', KEYS[k], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
  end
  redis.call('PEXPIRE', KEYS[k], tonumber(ARGV[1]) * 3)
end
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
    """Slot leases and queue places shared through one Redis.

    ``max_connections`` bounds the connections of one worker; a command that finds them all busy
    waits for one (up to ``pool_timeout``), as a request waits for a slot.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ollama-asgi",
        lease_ttl: float = 10.0,
        max_connections: int = 32,
        pool_timeout: float = 20.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.lease_ms = max(1000, int(lease_ttl * 1000))
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self.worker = uuid.uuid4().hex  # this process, as the backends' waiting workers know it
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, Any] = {}
        self._held: dict[tuple[str, ...], set[str]] = {}  # slot keys -> holders, renewed together
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
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=self.pool_timeout,
                # A loaded host opening a burst of connections may take over half a second to connect
                # to a healthy Redis; only a host that does not answer at all should read as down.
                socket_connect_timeout=2.0,
                socket_timeout=1.0,
                health_check_interval=5,
            )
            self._client = aioredis.Redis(connection_pool=pool)
            self._loop = loop
            self._scripts = {
                name: self._client.register_script(body)
                for name, body in (
                    ("acquire", _ACQUIRE),
                    ("release", _RELEASE),
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

    def _slot_keys(self, pool: str, backend: str, backend_capacity: int) -> tuple[str, ...]:
        own = self._key("slots", pool)
        return (own, self._key("backend-slots", backend)) if backend_capacity else (own,)

    async def take(
        self,
        pool: str,
        capacity: int,
        holder: str,
        *,
        backend: str = "",
        backend_capacity: int = 0,
        enter: QueuePlace | None = None,
        leave: str = "",
    ) -> int:
        """Take a slot of ``pool`` (and of ``backend``'s cap, when set) for ``holder``, in one round trip.

        Returns 1 when granted (``leave``, a queue place, is given up with it), 0 when not (``enter``,
        a queue place, is taken then), -1 when not and the queue is full. A worker refused here is
        woken (``wait_release``) by the next release on that backend, wherever it happens.
        """
        keys = self._slot_keys(pool, backend, backend_capacity)
        args: list[Any] = [capacity, self.lease_ms, holder, backend_capacity, self.worker, "", 0, 0, leave]
        if enter is not None:
            ttl_ms = max(1000, int((enter.deadline - time.monotonic()) * 1000) + 1000)
            args[5:8] = [enter.waiter, enter.limit, ttl_ms]
        result = int(
            await self._call(
                "acquire",
                [
                    keys[0],
                    self._key("backend-slots", backend),
                    self._key("waiting", backend),
                    self._key("queue", backend),
                ],
                args,
            )
        )
        if result == 1:
            self._held.setdefault(keys, set()).add(holder)
        return result

    async def acquire(self, pool: str, capacity: int, holder: str) -> bool:
        """A slot of ``pool`` for ``holder``, when one is free (``take`` without a cap or queue place)."""
        return await self.take(pool, capacity, holder) == 1

    async def release(self, pool: str, holder: str, *, backend: str = "", backend_capacity: int = 0) -> None:
        keys = self._slot_keys(pool, backend, backend_capacity)
        held = self._held.get(keys)
        if held is not None:
            held.discard(holder)
            if not held:
                del self._held[keys]
        if not self._healthy:
            return
        try:
            self._ensure()
            await self._scripts["release"](
                keys=[
                    keys[0],
                    self._key("backend-slots", backend),
                    self._key("waiting", backend),
                    self._key("released"),
                ],
                args=[holder, backend],
            )
        except (RedisError, OSError) as exc:
            self._mark_down(exc)  # the lease expires on its own

    async def wait_release(self, backend: str, within: float) -> None:
        """Return when a slot on ``backend`` may have been freed anywhere, or after ``within`` seconds."""
        event = self._events.setdefault(backend, asyncio.Event())
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
                for keys, holders in list(self._held.items()):
                    if holders:
                        await self._scripts["renew"](keys=list(keys), args=[self.lease_ms, *sorted(holders)])
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
        client = self._client
        if client is not None and self._healthy:
            for keys, holders in list(self._held.items()):
                try:
                    for key in keys:
                        await client.zrem(key, *holders)
                except (RedisError, OSError) as exc:
                    self._mark_down(exc)  # the leases expire on their own
                    break
        self._held.clear()
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
