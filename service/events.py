"""Interaction events (POST /events): stored in Redis when MAGNET_REDIS_URL is set, else in
process memory.

Redis layout (keys are not tied to a model version: events outlive reloads):

- ``magnet:events`` - a stream, one entry per event (fields user_id, item_id, timestamp),
  never trimmed by the service: what ``magnet events export`` reads.
- ``magnet:events:user:<user_id>`` - the user's most recent item ids, newest first,
  capped at MAGNET_EVENTS_PER_USER: what recommendations fold in and exclude.
- ``magnet:events:n:<user_id>`` - the user's event counter (events ever accepted): part
  of every cache key of that user's answers, so a new event changes the key and no
  answer older than it is served.

A batch is written in one MULTI/EXEC transaction: it is stored whole or not at all,
and POST /events acknowledges only after EXEC returned. Redis configured but down ->
`EventsUnavailable` (the route answers 503).

Reads: every answer reads the user's counter (it names the cache key); only an answer that
is computed reads the user's items too. Counter reads of concurrent requests are coalesced
(`CounterReads`): one MGET carries every counter asked for while the previous one was in
flight, so under load the per-request cost of the read is a fraction of a round trip, and
every request's counter still comes from an MGET sent after the request asked. The
counter is incremented in the same transaction that adds the items, so an answer computed
from items newer than the counter it was keyed under can only be served to requests that
read that counter before the event landed. Reads never fail a request: a Redis error is
logged, reads pause for MAGNET_REDIS_BACKOFF_S, and the answer comes from the bundle alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from service.cache import close_quietly, redis_client
from service.settings import Settings

log = logging.getLogger(__name__)

STREAM = "magnet:events"
_FAILED = object()  # a read that Redis did not answer


def user_key(user_id: str) -> str:
    return f"magnet:events:user:{user_id}"


def counter_key(user_id: str) -> str:
    return f"magnet:events:n:{user_id}"


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    timestamp: float


class EventsUnavailable(RuntimeError):
    """The configured Redis did not take the events; nothing was acknowledged."""


class EventStore(Protocol):
    """Where events live. Reads return None when the store cannot be read (Redis down)."""

    backend: str

    async def add(self, events: Sequence[Event]) -> int: ...

    async def counts(self, user_ids: Sequence[str]) -> list[int] | None: ...

    async def items(self, user_ids: Sequence[str]) -> list[tuple[str, ...]] | None: ...

    async def close(self) -> None: ...


class MemoryEvents:
    """Events in this process's memory (per worker; lost on restart)."""

    backend = "memory"

    def __init__(self, *, per_user: int, max_events: int) -> None:
        self._per_user = per_user
        self._users: dict[str, tuple[int, deque[str]]] = {}
        self.log: deque[Event] = deque(maxlen=max_events)

    async def add(self, events: Sequence[Event]) -> int:
        for e in events:
            count, items = self._users.get(e.user_id) or (0, deque(maxlen=self._per_user))
            items.appendleft(e.item_id)
            self._users[e.user_id] = (count + 1, items)
            self.log.append(e)
        return len(events)

    async def counts(self, user_ids: Sequence[str]) -> list[int] | None:
        users = self._users
        return [users[u][0] if u in users else 0 for u in user_ids]

    async def items(self, user_ids: Sequence[str]) -> list[tuple[str, ...]] | None:
        users = self._users
        return [tuple(users[u][1]) if u in users else () for u in user_ids]

    async def close(self) -> None:
        self._users.clear()


class RedisEvents:
    """Events in Redis (see the module docstring for the keys)."""

    backend = "redis"

    def __init__(self, url: str, *, per_user: int, write_timeout_s: float, read_timeout_s: float,
                 backoff_s: float, max_connections: int) -> None:
        self._client = redis_client(url, timeout_s=write_timeout_s, max_connections=max_connections)
        self._per_user = per_user
        self._write_timeout = write_timeout_s
        self._read_timeout = read_timeout_s
        self._backoff = backoff_s
        self._down_until = 0.0
        self._counters = CounterReads(self._read_counters)

    async def add(self, events: Sequence[Event]) -> int:
        pipe = self._client.pipeline(transaction=True)
        by_user: dict[str, list[str]] = {}
        for e in events:
            pipe.xadd(STREAM, {"user_id": e.user_id, "item_id": e.item_id, "timestamp": repr(float(e.timestamp))})
            by_user.setdefault(e.user_id, []).append(e.item_id)
        for user, items in by_user.items():
            pipe.lpush(user_key(user), *items)
            pipe.ltrim(user_key(user), 0, self._per_user - 1)
            pipe.incrby(counter_key(user), len(items))
        try:
            async with asyncio.timeout(self._write_timeout * 2):
                await pipe.execute()
        except Exception as exc:
            log.warning("events not stored: redis unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
            raise EventsUnavailable(f"event store (redis) unavailable: {type(exc).__name__}") from None
        return len(events)

    async def _read(self, what: str, call: Any) -> Any:
        """`call()`'s result, or `_FAILED` (logged, reads paused for the back-off) when Redis fails."""
        if time.monotonic() < self._down_until:
            return _FAILED
        try:
            async with asyncio.timeout(self._read_timeout):
                return await call()
        except Exception as exc:
            log.warning("events unreadable, answering from the bundle alone",
                        extra={"what": what, "error": f"{type(exc).__name__}: {exc}", "retry_in_s": self._backoff})
            self._down_until = time.monotonic() + self._backoff
            return _FAILED

    async def counts(self, user_ids: Sequence[str]) -> list[int] | None:
        """Each user's event counter, the one read every answer pays (coalesced with the reads
        of concurrent requests into one MGET, see `CounterReads`)."""
        if not user_ids:
            return []
        return await self._counters.read(user_ids)

    async def _read_counters(self, user_ids: list[str]) -> dict[str, int] | None:
        raw = await self._read("count", lambda: self._client.mget([counter_key(u) for u in user_ids]))
        return None if raw is _FAILED else {u: int(v or 0) for u, v in zip(user_ids, raw)}

    async def items(self, user_ids: Sequence[str]) -> list[tuple[str, ...]] | None:
        """Each user's recent item ids, newest first (read only when an answer is computed)."""
        if not user_ids:
            return []

        async def lists() -> list:
            pipe = self._client.pipeline(transaction=False)
            for u in user_ids:
                pipe.lrange(user_key(u), 0, -1)
            return await pipe.execute()

        raw = await self._read("items", lists)
        return None if raw is _FAILED else [tuple(i.decode() for i in items) for items in raw]

    async def close(self) -> None:
        await close_quietly(self._client)


class CounterReads:
    """Coalesces the counter reads of concurrent requests: a read joins the next batch, and one
    batch at a time is fetched (`fetch`: users -> {user: counter}, or None when Redis cannot be
    read). A batch is sent only after every read in it was asked, so no request gets a counter
    older than its own arrival - the guarantee a per-request GET gave - while a burst of
    requests shares one round trip (docs/benchmarks.md, "Online serving: speed")."""

    def __init__(self, fetch: Callable[[list[str]], Awaitable[dict[str, int] | None]]) -> None:
        self._fetch = fetch
        self._waiting: list[tuple[Sequence[str], asyncio.Future]] = []
        self._task: asyncio.Task | None = None  # the batch loop while one runs (referenced: asyncio keeps weak refs)

    async def read(self, user_ids: Sequence[str]) -> list[int] | None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((user_ids, future))
        if self._task is None:
            self._task = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        """Fetch batches until no read is waiting; whatever happens (a cancelled task at shutdown
        included), every read taken is answered."""
        batch: list[tuple[Sequence[str], asyncio.Future]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                got = await self._fetch(list(dict.fromkeys(u for users, _ in batch for u in users)))
                for users, future in batch:
                    if not future.done():
                        future.set_result(None if got is None else [got[u] for u in users])
                batch = []
        finally:
            self._task = None
            for _, future in batch + self._waiting:
                if not future.done():
                    future.set_result(None)
            self._waiting = []


def make_event_store(settings: Settings) -> EventStore:
    """Redis when MAGNET_REDIS_URL is set, else process memory."""
    if settings.redis_url:
        return RedisEvents(settings.redis_url, per_user=settings.events_per_user,
                           write_timeout_s=settings.events_timeout_s, read_timeout_s=settings.redis_timeout_s * 4,
                           backoff_s=settings.redis_backoff_s, max_connections=settings.redis_max_connections)
    return MemoryEvents(per_user=settings.events_per_user, max_events=settings.events_memory_max)


def read_stream(client: Any, since: float | None = None, batch: int = 10_000) -> list[Event]:
    """Every event of the stream (a synchronous redis-py client), oldest first; with `since`,
    only those with timestamp >= since (`magnet events export`)."""
    out: list[Event] = []
    start = "-"
    while True:
        chunk = client.xrange(STREAM, min=start, max="+", count=batch)
        if not chunk:
            break
        for entry_id, fields in chunk:
            f = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                 for k, v in fields.items()}
            e = Event(f["user_id"], f["item_id"], float(f["timestamp"]))
            if since is None or e.timestamp >= since:
                out.append(e)
        last = chunk[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else last)
        if len(chunk) < batch:
            break
    return out
