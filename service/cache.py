"""Response cache: Redis when MAGNET_REDIS_URL is set, an in-process LRU otherwise.

With Redis, a small in-process LRU sits in front of it by default
(MAGNET_LOCAL_CACHE_SIZE entries for MAGNET_LOCAL_CACHE_TTL_S seconds; size 0 turns
it off): a redis-py asyncio round trip costs more CPU than the rest of a cached
request (docs/benchmarks.md, "Serving"), so hot keys are answered from process
memory instead.

Values are the exact JSON bytes of a response body, so a hit is served without
re-encoding. Keys start with ``magnet:<model_version>:`` so a reload never serves
the previous model's answers, and every entry carries a TTL.

The cache is an accelerator, never a dependency: a Redis error or timeout is
counted, logged once, and answered as a miss; the caller computes and responds as
usual. After an error the Redis cache backs off (exponentially, capped) and skips
Redis entirely until the pause ends; the next call then tries again, and redis-py
opens a fresh connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

from service.metrics import CACHE_KINDS, Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


def recommend_key(model_version: str, user_id: str, k: int, events: int = 0) -> str:
    """Key for one user's top-k after the user's `events`-th event (the user's event counter,
    service.events): an event changes the key, so no answer older than it is served. The user
    id is last, so no separator ambiguity."""
    return f"magnet:{model_version}:rec:{k}:{events}:{user_id}"


def explain_key(model_version: str, user_id: str, item_id: str, events: int = 0) -> str:
    """Key for one explanation (after the user's `events`-th event); the user id's length keeps
    (a:b, c) and (a, b:c) apart."""
    return f"magnet:{model_version}:exp:{events}:{len(user_id)}:{user_id}:{item_id}"


def redis_client(url: str, *, timeout_s: float, max_connections: int) -> Any:
    """A redis-py asyncio client with short timeouts and no client retries (the cache and the
    event store both use it; each answers a failure its own way)."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),  # one try; the caller decides what a failure means
        retry_on_timeout=False,
        health_check_interval=0,
        max_connections=max_connections,
    )


async def close_quietly(client: Any) -> None:
    """Close a redis-py client; closing a dead connection is not worth a traceback."""
    try:
        await client.aclose()
    except Exception:
        pass


def _count(counters: dict, metrics: Metrics, backend: str, kind: str, values: Sequence[bytes | None]) -> None:
    """Adds a lookup's hits and misses to the (backend, kind) counters, bound once per kind."""
    pair = counters.get(kind)
    if pair is None:
        pair = counters[kind] = metrics.cache_counters(backend, kind)
    hits = sum(v is not None for v in values)
    if hits:
        pair[0].inc(hits)
    if hits < len(values):
        pair[1].inc(len(values) - hits)


class Cache(Protocol):
    """What the routers need from a cache backend."""

    backend: str

    async def get_many(self, keys: Sequence[str], kind: str) -> list[bytes | None]: ...

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None: ...

    async def close(self) -> None: ...


class LocalCache:
    """In-process LRU with per-entry expiry; lives on the event loop, so no locking."""

    backend = "local"

    def __init__(self, *, max_items: int, ttl_s: float, metrics: Metrics) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_items
        self._ttl = ttl_s
        self._metrics = metrics
        self._counters: dict[str, tuple] = {}

    def lookup(self, key: str, now: float) -> bytes | None:
        """The live value under `key`, marked most recently used; an expired one is dropped.
        Synchronous and uncounted, so the two-tier cache can use it without an await."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[0] > now:
            self._data.move_to_end(key)
            return entry[1]
        del self._data[key]
        return None

    def store(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Inserts or refreshes `items` (TTL from now), then evicts least recently used beyond the size."""
        expires = time.monotonic() + self._ttl
        data = self._data
        for key, value in items:
            data[key] = (expires, value)
            data.move_to_end(key)
        while len(data) > self._max:
            data.popitem(last=False)

    async def get_many(self, keys: Sequence[str], kind: str) -> list[bytes | None]:
        now = time.monotonic()
        out = [self.lookup(key, now) for key in keys]
        _count(self._counters, self._metrics, self.backend, kind, out)
        return out

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        self.store(items)

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """redis-py asyncio client with short timeouts, no client retries, and our own back-off."""

    backend = "redis"

    def __init__(self, url: str, *, ttl_s: int, timeout_s: float, backoff_s: float, backoff_max_s: float,
                 max_connections: int, metrics: Metrics) -> None:
        self._client = redis_client(url, timeout_s=timeout_s, max_connections=max_connections)
        self._ttl = ttl_s
        self._timeout = timeout_s
        self._backoff0 = backoff_s
        self._backoff_max = backoff_max_s
        self._backoff = backoff_s
        self._down_until = 0.0
        self._down = False
        self._metrics = metrics
        self._counters: dict[str, tuple] = {}
        self._url = url

    def _available(self, op: str) -> bool:
        if time.monotonic() < self._down_until:
            self._metrics.cache_bypassed.labels(self.backend, op).inc()
            return False
        return True

    def _failed(self, op: str, exc: BaseException) -> None:
        self._metrics.cache_errors.labels(self.backend, op).inc()
        self._metrics.cache_up.labels(self.backend).set(0)
        if not self._down:
            log.warning("redis cache unavailable, serving without it",
                        extra={"op": op, "error": f"{type(exc).__name__}: {exc}", "retry_in_s": self._backoff})
        self._down = True
        self._down_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)

    def _succeeded(self) -> None:
        if self._down:
            log.info("redis cache reachable again")
            self._metrics.cache_up.labels(self.backend).set(1)
        self._down = False
        self._backoff = self._backoff0

    async def get_many(self, keys: Sequence[str], kind: str) -> list[bytes | None]:
        if not keys:
            return []
        if not self._available("get"):
            self._metrics.cache_misses.labels(self.backend, kind).inc(len(keys))
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self._timeout * 4):  # not wait_for: that wraps each call in a Task
                raw = await (self._client.get(keys[0]) if len(keys) == 1 else self._client.mget(list(keys)))
        except Exception as exc:  # any client failure is a miss, never a 5xx
            self._failed("get", exc)
            self._metrics.cache_misses.labels(self.backend, kind).inc(len(keys))
            return [None] * len(keys)
        self._succeeded()
        values = [raw] if len(keys) == 1 else list(raw)
        _count(self._counters, self._metrics, self.backend, kind, values)
        return values

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items or not self._available("set"):
            return
        try:
            async with asyncio.timeout(self._timeout * 4):
                if len(items) == 1:
                    await self._client.set(items[0][0], items[0][1], ex=self._ttl)
                else:
                    pipe = self._client.pipeline(transaction=False)
                    for key, value in items:
                        pipe.set(key, value, ex=self._ttl)
                    await pipe.execute()
        except Exception as exc:
            self._failed("set", exc)
            return
        self._succeeded()

    async def close(self) -> None:
        await close_quietly(self._client)


class TwoTierCache:
    """Redis behind a bounded, short-lived in-process LRU (the front tier).

    A read checks the front tier, then Redis for what it lacks, and keeps Redis hits in
    the front tier; a write goes to both. Serving a front-tier copy that has outlived its
    Redis entry (expired, flushed, evicted) is safe: keys name the model_version and a
    body is a pure function of (model_version, key), so the copy is still the right
    answer, and it lives at most the front tier's TTL. A reload changes every key.

    Counting: each lookup is counted once - a hit under backend "local" when the front
    tier has it, otherwise by the Redis cache exactly as without a front tier (hit or
    miss, errors, back-off). So summing hits and misses over backends still gives the
    lookups, and Redis being down never fails a request here either.
    """

    backend = "redis"

    def __init__(self, front: LocalCache, back: RedisCache, metrics: Metrics) -> None:
        self._front = front
        self._back = back
        self._metrics = metrics
        # Front-tier hit counters, bound once (see Metrics.cache_counters): .labels() per hit costs a few us.
        self._hits: dict[str, Any] = {kind: metrics.cache_counters(front.backend, kind)[0] for kind in CACHE_KINDS}

    def _hit_counter(self, kind: str) -> Any:
        counter = self._hits.get(kind)
        if counter is None:
            counter = self._hits[kind] = self._metrics.cache_counters(self._front.backend, kind)[0]
        return counter

    async def get_many(self, keys: Sequence[str], kind: str) -> list[bytes | None]:
        front = self._front
        now = time.monotonic()
        if len(keys) == 1:  # the GET routes: no bookkeeping lists on the hot path
            key = keys[0]
            value = front.lookup(key, now)
            if value is not None:
                (self._hits.get(kind) or self._hit_counter(kind)).inc()
                return [value]
            values = await self._back.get_many(keys, kind)
            if values[0] is not None:
                front.store(((key, values[0]),))
            return values
        values = [front.lookup(key, now) for key in keys]
        missing = [n for n, value in enumerate(values) if value is None]
        if len(missing) < len(values):
            self._hit_counter(kind).inc(len(values) - len(missing))
        if missing:  # one MGET for just the keys the front tier lacks
            fetched = await self._back.get_many([keys[n] for n in missing], kind)
            fill = []
            for n, value in zip(missing, fetched):
                if value is not None:
                    values[n] = value
                    fill.append((keys[n], value))
            if fill:
                front.store(fill)
        return values

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items:
            return
        self._front.store(items)  # first: the front tier serves it even when Redis is down
        await self._back.set_many(items)

    async def close(self) -> None:
        await self._front.close()
        await self._back.close()


def uses_front_tier(settings: Settings) -> bool:
    """Whether `make_cache` puts an in-process LRU in front of Redis for these settings."""
    return bool(settings.redis_url) and settings.local_cache_size > 0


def make_cache(settings: Settings, metrics: Metrics) -> Cache:
    """Redis (behind the in-process front tier unless MAGNET_LOCAL_CACHE_SIZE is 0) when a
    URL is configured, else the in-process LRU alone."""
    if not settings.redis_url:
        return LocalCache(max_items=settings.cache_max_items, ttl_s=settings.cache_ttl_s, metrics=metrics)
    redis = RedisCache(settings.redis_url, ttl_s=settings.cache_ttl_s, timeout_s=settings.redis_timeout_s,
                       backoff_s=settings.redis_backoff_s, backoff_max_s=settings.redis_backoff_max_s,
                       max_connections=settings.redis_max_connections, metrics=metrics)
    if not uses_front_tier(settings):
        return redis
    ttl_s = min(settings.local_cache_ttl_s, settings.cache_ttl_s)  # never outlive what Redis would keep
    log.info("cache: redis with an in-process front tier",
             extra={"local_cache_size": settings.local_cache_size, "local_cache_ttl_s": ttl_s})
    front = LocalCache(max_items=settings.local_cache_size, ttl_s=ttl_s, metrics=metrics)
    return TwoTierCache(front, redis, metrics)
