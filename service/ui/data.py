"""Read-only JSON the dashboard needs that the public API does not give.

Model facts from the bundle manifest, the live cache hit ratio from this process's
Prometheus counters, id/title search, and per-item display names and routing gates.
Scores and attributions are *not* computed here: the pages take those from
/recommend, /explain and /similar, so the dashboard shows exactly what the API says.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.metrics import CACHE_KINDS, Metrics
from service.state import ModelState

SEARCH_LIMIT = 50
EXAMPLES = 6


# ------------------------------------------------------------------ model page


def _counter_totals(counter: Any) -> dict[tuple[str, str], float]:
    """{(backend, kind-or-op): value} of a labelled prometheus Counter."""
    out: dict[tuple[str, str], float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels.get("backend", ""), sample.labels.get("kind") or sample.labels.get("op", ""))
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _ratio(hits: float, misses: float) -> float | None:
    return hits / (hits + misses) if hits + misses else None


def cache_stats(metrics: Metrics) -> dict[str, Any]:
    """Hit ratio overall and per kind from this worker's counters (docs/api.md, Cache:
    every lookup counts once, as a hit of the tier that answered or as a miss)."""
    hits, misses = _counter_totals(metrics.cache_hits), _counter_totals(metrics.cache_misses)
    errors = _counter_totals(metrics.cache_errors)
    backends = {b for b, _ in misses}
    by_kind = {}
    for kind in CACHE_KINDS:
        h = sum(v for (_, k), v in hits.items() if k == kind)
        m = sum(v for (_, k), v in misses.items() if k == kind)
        by_kind[kind] = {"hits": int(h), "misses": int(m), "hit_ratio": _ratio(h, m)}
    total_h, total_m = sum(hits.values()), sum(misses.values())
    return {
        "backend": "redis" if "redis" in backends else "local",
        "hits": int(total_h),
        "misses": int(total_m),
        "hit_ratio": _ratio(total_h, total_m),
        "front_tier_hits": int(sum(v for (b, _), v in hits.items() if b == "local")) if "redis" in backends else None,
        "errors": int(sum(errors.values())),
        "by_kind": by_kind,
        "scope": "this worker process",
    }


def _split_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {split: {k: v for k, v in metrics[split].items() if isinstance(v, (int, float))}
            for split in ("valid", "test") if isinstance(metrics.get(split), dict)}


def _routing(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The run's routing block as exported, with `epochs` filled in for bundles made
    before it was recorded (one entry per evaluated epoch, every epoch by default)."""
    routing = metrics.get("routing")
    if not isinstance(routing, dict):
        return None
    out = dict(routing)
    n = len(out.get("coverage_entropy") or [])
    if not isinstance(out.get("epochs"), list) or len(out["epochs"]) != n:
        out["epochs"] = list(range(1, n + 1))
    return out


def model_info(state: ModelState, metrics: Metrics) -> dict[str, Any]:
    """Everything the model page shows, plus examples the landing page links to."""
    b = state.bundle
    m = b.manifest
    run = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
    names = b.item_names
    top = np.argsort(-b.popularity, kind="stable")[:EXAMPLES].tolist()
    return {
        "model_version": b.model_version,
        "model": b.model,
        "dataset": m.get("dataset") or run.get("dataset"),
        "created_at": m.get("created_at"),
        "loaded_at": state.loaded_at,
        "n_users": b.n_users,
        "n_items": b.n_items,
        "dim": b.dim,
        "index": b.index_info,
        "experts": [{"name": e.name, "role": e.role, "modality": e.modality} for e in b.experts],
        "metrics": _split_metrics(run),
        "training": {k: run.get(k) for k in ("best_epoch", "epochs_run", "seed", "device", "train_seconds")},
        "routing": _routing(run),
        "item_files": sorted(b.item_files),
        "has_names": names is not None,
        "cold_items": m.get("cold_items"),
        "cache": cache_stats(metrics),
        "examples": {
            "users": [{"user_id": u, "interactions": int(b.seen_indptr[n + 1] - b.seen_indptr[n])}
                      for n, u in enumerate(b.user_ids[:EXAMPLES])],
            "items": [_item_brief(state, i) for i in top],
        },
    }


# ------------------------------------------------------------------ items


def _item_brief(state: ModelState, item: int) -> dict[str, Any]:
    names = state.bundle.item_names
    return {"item_id": state.bundle.item_ids[item], "name": names[item] if names else None,
            "popularity": int(state.bundle.popularity[item])}


def item_routing(state: ModelState, item: int) -> dict[str, Any]:
    """The item's routing gates over experts, and the routing weight per modality.

    Gates are per item (they do not depend on the user). Each expert's gate goes to
    the modalities it is attributed to, split evenly, by the same rule /explain uses
    for contributions (`service.explanations.expert_modalities`)."""
    gates = state.bundle.item_gates[item].astype(np.float64)
    experts = [{"name": e.name, "role": e.role, "modality": e.modality, "weight": float(g)}
               for e, g in zip(state.bundle.experts, gates)]
    shares: dict[str, float] = {}
    for g, mods in zip(gates, state.attribution):
        for mod in mods:
            shares[mod] = shares.get(mod, 0.0) + float(g) / len(mods)
    total = sum(shares.values())
    modalities = {k: v / total for k, v in sorted(shares.items())} if total > 0 else {}
    top = max(experts, key=lambda e: e["weight"])["name"] if experts and gates.max() > 0 else None
    return {"experts": experts, "modalities": modalities, "top_expert": top}


def items_info(state: ModelState, item_ids: Sequence[str], *, routing: bool = False) -> dict[str, Any]:
    """Display name and popularity (and routing) per requested id; null for unknown ids."""
    out: dict[str, Any] = {}
    for item_id in item_ids:
        item = state.item_index.get(item_id)
        if item is None:
            out[item_id] = None
            continue
        info = _item_brief(state, item)
        if routing:
            info.update(item_routing(state, item))
        out[item_id] = info
    return {"model_version": state.model_version, "items": out}


# ------------------------------------------------------------------ search


@dataclass(frozen=True)
class _SearchIndex:
    """Case-folded ids and names of one bundle, built on first search."""

    user_keys: list[str]
    item_keys: list[str]
    name_keys: list[str]


_indexes: "weakref.WeakKeyDictionary[ModelState, _SearchIndex]" = weakref.WeakKeyDictionary()


def _index(state: ModelState) -> _SearchIndex:
    index = _indexes.get(state)
    if index is None:
        names = state.bundle.item_names or []
        index = _SearchIndex([u.casefold() for u in state.bundle.user_ids],
                             [i.casefold() for i in state.bundle.item_ids],
                             [(n or "").casefold() for n in names])
        _indexes[state] = index
    return index


def _matches(query: str, keys: Iterable[str]) -> dict[int, int]:
    """{position: match class} for every key holding `query`: 0 exact, 1 prefix, 2 inside."""
    return {n: 0 if k == query else 1 if k.startswith(query) else 2 for n, k in enumerate(keys) if query in k}


def search(state: ModelState, query: str, limit: int = 8) -> dict[str, Any]:
    """Users by id, items by id or display name, case-insensitive. Best matches first:
    exact before prefix before anywhere, an id match before a name match of the same
    class, then popular items first."""
    q = query.strip().casefold()
    if not q:
        return {"query": query, "users": [], "items": []}
    index = _index(state)
    user_hits = _matches(q, index.user_keys)
    users = sorted(user_hits, key=lambda n: (user_hits[n], n))[:limit]
    rank = {n: 2 * c for n, c in _matches(q, index.item_keys).items()}
    for n, c in _matches(q, index.name_keys).items():
        rank[n] = min(rank.get(n, 2 * c + 1), 2 * c + 1)
    pop = state.bundle.popularity
    items = sorted(rank, key=lambda n: (rank[n], -int(pop[n]), n))[:limit]
    return {"query": query,
            "users": [state.bundle.user_ids[n] for n in users],
            "items": [_item_brief(state, n) for n in items]}
