"""The answers of /recommend, /similar and /explain: their bodies, built from the
served model, with the cache in front (read first, written after computing).

Bodies are encoded once with orjson; the bytes are what the cache stores and what a
hit returns, so a cached answer is byte-for-byte the computed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from starlette.concurrency import run_in_threadpool

from service.cache import Cache, explain_key, recommend_key
from service.explanations import explain_pair
from service.metrics import Metrics
from service.state import ModelState

def _items(state: ModelState, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    item_ids = state.bundle.item_ids
    return [{"item_id": item_ids[i], "score": s} for i, s in zip(ids.tolist(), scores.tolist())]


def compute_recommendations(state: ModelState, user_ids: Sequence[str], k: int) -> list[dict[str, Any]]:
    """Bodies for `user_ids` in order: known users through one batched FAISS search,
    unknown ones get the popular items with ``fallback: "popular"``."""
    known = [(n, state.user_index[u]) for n, u in enumerate(user_ids) if u in state.user_index]
    ranked = state.searcher.recommend([u for _, u in known], k)
    out: list[dict[str, Any] | None] = [None] * len(user_ids)
    for (n, _), (ids, scores) in zip(known, ranked):
        out[n] = {"user_id": user_ids[n], "model_version": state.model_version, "fallback": None,
                  "items": _items(state, ids, scores)}
    if len(known) < len(user_ids):
        pop = _items(state, *state.searcher.popular(k))
        for n, body in enumerate(out):
            if body is None:
                out[n] = {"user_id": user_ids[n], "model_version": state.model_version, "fallback": "popular",
                          "items": pop}
    return out  # type: ignore[return-value]


async def recommendations(
    state: ModelState, cache: Cache, metrics: Metrics, user_ids: Sequence[str], k: int, *,
    use_cache: bool, offload_work: int,
) -> list[tuple[bytes, str]]:
    """(JSON body, "hit" | "miss" | "fallback") per user. Known users go through the
    cache (one MGET / one pipelined SET for a batch); fallbacks are cheap and not cached.
    A search of more than `offload_work` multiply-adds (queries x items x dim) runs in
    a worker thread, keeping the event loop free for other requests."""
    known = [n for n, u in enumerate(user_ids) if u in state.user_index]
    cached: list[bytes | None] = [None] * len(user_ids)
    if use_cache and known:
        keys = [recommend_key(state.model_version, user_ids[n], k) for n in known]
        for n, value in zip(known, await cache.get_many(keys, "recommend")):
            cached[n] = value
    todo = [n for n in range(len(user_ids)) if cached[n] is None]
    result: list[tuple[bytes, str]] = [(v, "hit") if v is not None else (b"", "") for v in cached]
    if todo:
        wanted = [user_ids[n] for n in todo]
        b = state.bundle
        if len(todo) * b.n_items * b.dim > offload_work:
            bodies = await run_in_threadpool(compute_recommendations, state, wanted, k)
        else:
            bodies = compute_recommendations(state, wanted, k)
        writes = []
        for n, body in zip(todo, bodies):
            data = orjson.dumps(body)
            if body["fallback"]:
                metrics.fallbacks.labels(body["fallback"]).inc()
                result[n] = (data, "fallback")
            else:
                result[n] = (data, "miss")
                if use_cache:
                    writes.append((recommend_key(state.model_version, user_ids[n], k), data))
        if writes:
            await cache.set_many(writes)
    return result


def compute_similar(state: ModelState, item: int, k: int) -> dict[str, Any]:
    ids, scores = state.searcher.similar(item, k)
    return {"item_id": state.bundle.item_ids[item], "model_version": state.model_version,
            "items": _items(state, ids, scores)}


async def explanation(state: ModelState, cache: Cache, user_id: str, item_id: str) -> bytes:
    """JSON body of the explanation for known ids, with ``cached`` true on a hit.

    The cache holds the body without the flag; it is appended on the way out."""
    key = explain_key(state.model_version, user_id, item_id)
    (hit,) = await cache.get_many([key], "explain")
    if hit is not None:
        return hit[:-1] + b',"cached":true}'
    body = {"user_id": user_id, "item_id": item_id, "model_version": state.model_version,
            **explain_pair(state.bundle, state.user_index[user_id], state.item_index[item_id],
                           attribution=state.attribution)}
    data = orjson.dumps(body)
    await cache.set_many([(key, data)])
    return data[:-1] + b',"cached":false}'
