"""The answers of /recommend, /similar and /explain: their bodies, built from the
served model, with the cache in front (read first, written after computing).

Bodies are encoded once with orjson; the bytes are what the cache stores and what a
hit returns, so a cached answer is byte-for-byte the computed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from starlette.concurrency import run_in_threadpool

from service.cache import Cache, explain_key, recommend_key
from service.events import EventStore
from service.explanations import explain_pair
from service.metrics import Metrics
from service.state import ModelState

def _items(state: ModelState, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    item_ids = state.bundle.item_ids
    return [{"item_id": item_ids[i], "score": s} for i, s in zip(ids.tolist(), scores.tolist())]


NO_ITEMS = np.zeros(0, dtype=np.int64)  # read-only: shared by every request that has none
NO_ITEMS.setflags(write=False)


@dataclass(frozen=True)
class Query:
    """One user's request beyond its id, as internal item indices (see POST /recommend/{user_id})."""

    k: int
    history: np.ndarray = field(default_factory=lambda: NO_ITEMS)
    exclude: np.ndarray = field(default_factory=lambda: NO_ITEMS)
    allowed: np.ndarray | None = None  # candidates and filter together; None = every item


def event_items(state: ModelState, items: Sequence[str]) -> np.ndarray:
    """A user's event item ids as internal indices (items the served bundle lacks are skipped)."""
    if not items:
        return NO_ITEMS
    index = state.item_index
    return np.array([index[i] for i in items if i in index], dtype=np.int64)


def _union(*parts: np.ndarray) -> np.ndarray:
    """Sorted distinct items of the non-empty parts (no concatenation when only one is non-empty)."""
    full = [p for p in parts if p.size]
    if not full:
        return NO_ITEMS
    return np.unique(np.concatenate(full)) if len(full) > 1 else np.unique(full[0])


def compute_one(state: ModelState, user_id: str, events: np.ndarray, q: Query) -> dict[str, Any]:
    """The body for one user with events and a query: the user's vector folded in from events and
    history (less what `exclude` names), ranking exact over what remains (service.search.rank)."""
    user = state.user_index.get(user_id)
    fold = _union(events, q.history)
    if q.exclude.size and fold.size:
        fold = np.setdiff1d(fold, q.exclude, assume_unique=True)
    vec = state.foldin.user_vector(user, fold)
    seen = state.bundle.seen(user) if user is not None else NO_ITEMS
    excluded = _union(seen, events, q.history, q.exclude)
    if vec is None:
        ids, scores = state.searcher.popular_among(q.k, excluded, q.allowed)
        fallback: str | None = "popular"
    else:
        ids, scores = state.searcher.rank(vec, excluded, q.k, q.allowed)
        fallback = None if user is not None else "history"
    return {"user_id": user_id, "model_version": state.model_version, "fallback": fallback,
            "items": _items(state, ids, scores)}


def compute_recommendations(state: ModelState, user_ids: Sequence[str], k: int,
                            events: Sequence[np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Bodies for `user_ids` in order: known users without events through one batched FAISS
    search, users with events folded in (`compute_one`), the rest get the popular items with
    ``fallback: "popular"``."""
    events = events if events is not None else [NO_ITEMS] * len(user_ids)
    known = [(n, state.user_index[u]) for n, u in enumerate(user_ids)
             if u in state.user_index and not events[n].size]
    ranked = state.searcher.recommend([u for _, u in known], k)
    out: list[dict[str, Any] | None] = [None] * len(user_ids)
    for (n, _), (ids, scores) in zip(known, ranked):
        out[n] = {"user_id": user_ids[n], "model_version": state.model_version, "fallback": None,
                  "items": _items(state, ids, scores)}
    pop: list[dict[str, Any]] | None = None
    for n, body in enumerate(out):
        if body is not None:
            continue
        if events[n].size:
            out[n] = compute_one(state, user_ids[n], events[n], Query(k))
            continue
        if pop is None:
            pop = _items(state, *state.searcher.popular(k))
        out[n] = {"user_id": user_ids[n], "model_version": state.model_version, "fallback": "popular", "items": pop}
    return out  # type: ignore[return-value]


async def event_counts(store: EventStore, user_ids: Sequence[str]) -> list[int]:
    """Each user's event counter (0 for none); all 0 when it cannot be read (Redis down): the answer
    is then the bundle's alone, which is exactly what the cache holds under counter 0."""
    got = await store.counts(user_ids)
    return [0] * len(user_ids) if got is None else got


async def event_lists(state: ModelState, store: EventStore, user_ids: Sequence[str]) -> list[np.ndarray] | None:
    """Each user's event items as internal indices; None when they cannot be read (Redis down)."""
    got = await store.items(user_ids)
    return None if got is None else [event_items(state, items) for items in got]


async def recommendations(
    state: ModelState, cache: Cache, metrics: Metrics, user_ids: Sequence[str], k: int, *,
    use_cache: bool, offload_work: int, store: EventStore,
) -> list[tuple[bytes, str]]:
    """(JSON body, "hit" | "miss" | "fallback") per user. Answers that are not the popular
    fallback go through the cache (one MGET / one pipelined SET for a batch) under keys that
    carry each user's event counter (read before the cache, see `RedisEvents.counts`); the users' event items
    are read only for the answers that are computed. A search of more than `offload_work`
    multiply-adds (queries x items x dim) runs in a worker thread, keeping the event loop free."""
    counts = await event_counts(store, user_ids)
    cacheable = [n for n, u in enumerate(user_ids) if u in state.user_index or counts[n]]
    cached: list[bytes | None] = [None] * len(user_ids)
    keys = {n: recommend_key(state.model_version, user_ids[n], k, counts[n]) for n in cacheable}
    if use_cache and cacheable:
        for n, value in zip(cacheable, await cache.get_many([keys[n] for n in cacheable], "recommend")):
            cached[n] = value
    todo = [n for n in range(len(user_ids)) if cached[n] is None]
    result: list[tuple[bytes, str]] = [(v, "hit") if v is not None else (b"", "") for v in cached]
    if todo:
        wanted = [user_ids[n] for n in todo]
        with_events = [n for n in todo if counts[n]]
        lists = await event_lists(state, store, [user_ids[n] for n in with_events]) if with_events else []
        unreadable = lists is None  # counters read, items not: answer from the bundle, cache nothing of theirs
        by_user = dict(zip(with_events, lists or []))
        items = [by_user.get(n, NO_ITEMS) for n in todo]
        b = state.bundle
        if len(todo) * b.n_items * b.dim > offload_work:
            bodies = await run_in_threadpool(compute_recommendations, state, wanted, k, items)
        else:
            bodies = compute_recommendations(state, wanted, k, items)
        writes = []
        for n, body in zip(todo, bodies):
            data = orjson.dumps(body)
            if body["fallback"]:
                metrics.fallbacks.labels(body["fallback"]).inc()
            if body["fallback"] == "popular":
                result[n] = (data, "fallback")
            else:
                result[n] = (data, "miss")
                if use_cache and n in keys and not (unreadable and counts[n]):
                    writes.append((keys[n], data))
        if writes:
            await cache.set_many(writes)
    return result


async def recommend_query(state: ModelState, metrics: Metrics, user_id: str, q: Query, *,
                          offload_work: int, store: EventStore) -> bytes:
    """The body of POST /recommend/{user_id} (and GET with ``exclude``): not cached (it depends on
    the request), folded in from the user's events and the request's history."""
    lists = await event_lists(state, store, [user_id])
    events = lists[0] if lists else NO_ITEMS
    b = state.bundle
    if b.n_items * b.dim > offload_work:
        body = await run_in_threadpool(compute_one, state, user_id, events, q)
    else:
        body = compute_one(state, user_id, events, q)
    if body["fallback"]:
        metrics.fallbacks.labels(body["fallback"]).inc()
    return orjson.dumps(body)


def compute_similar(state: ModelState, item: int, k: int) -> dict[str, Any]:
    ids, scores = state.searcher.similar(item, k)
    return {"item_id": state.bundle.item_ids[item], "model_version": state.model_version,
            "items": _items(state, ids, scores)}


async def explanation(state: ModelState, cache: Cache, user_id: str, item_id: str, *,
                      store: EventStore) -> bytes | None:
    """JSON body of the explanation, with ``cached`` true on a hit; None for a user the model
    never saw who has no events either. A user with events is explained with the vector
    /recommend ranks with (folded in from them), under a key carrying the event counter.

    The cache holds the body without the flag; it is appended on the way out."""
    (count,) = await event_counts(store, [user_id])
    user = state.user_index.get(user_id)
    if user is None and not count:
        return None
    key = explain_key(state.model_version, user_id, item_id, count)
    (hit,) = await cache.get_many([key], "explain")
    if hit is not None:
        return hit[:-1] + b',"cached":true}'
    lists = await event_lists(state, store, [user_id]) if count else [NO_ITEMS]
    vec = state.foldin.user_vector(user, lists[0] if lists else NO_ITEMS)
    if vec is None:
        return None
    body = {"user_id": user_id, "item_id": item_id, "model_version": state.model_version,
            **explain_pair(state.bundle, vec, state.item_index[item_id], attribution=state.attribution)}
    data = orjson.dumps(body)
    if lists is not None:  # never file a bundle-only answer under a counter that has events
        await cache.set_many([(key, data)])
    return data[:-1] + b',"cached":false}'
