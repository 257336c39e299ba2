"""Filtered retrieval at 10^6 items: the service's `ItemSearcher.rank` with a filter that keeps
1% of the catalogue and a 1,000-item exclude list, per query: p50/p99 latency and recall@k
against brute force (float64 scores over exactly the allowed, non-excluded items; exact
results required: every list must equal brute force's).

Both retrieval paths of a filtered request are timed on the same queries, against the flat
(exact) and the HNSW index the exporter builds (`offline.export.build_index`):

* ``brute``: score every allowed item (`score_items`) - what the service does when the
  allowed set has at most MAGNET_BRUTE_FORCE_MAX items (default 20,000);
* ``selector``: FAISS search with an `IDSelectorBitmap` of the allowed, non-excluded items,
  candidates re-scored;
* ``unfiltered``: the plain search with the same exclude list (no filter), the baseline the
  ratios are taken against (same run, same machine state).

Embeddings are `bench.retrieval.synthetic_embeddings` (recommender-shaped); the filter is an
attribute with 100 values of 1% each (assigned at random), each query asks one value.

    python -m bench.filtered [--items 1000000] [--queries 300] [--json OUT]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import limit_threads, machine_info, setup_logging, utc_now, write_json
from bench.retrieval import synthetic_embeddings
from offline.export import build_index
from service.bundle import Bundle
from service.search import ItemSearcher

log = logging.getLogger("bench.filtered")


def in_memory_bundle(items: np.ndarray, index: Any, info: dict[str, Any]) -> Bundle:
    """A Bundle holding just what retrieval reads (no users, no experts)."""
    n, d = items.shape
    empty = np.zeros((n, 0), dtype=np.float32)
    return Bundle(path=Path("."), manifest={"model_version": "bench", "model": "bench", "index": info},
                  user_emb=np.zeros((0, d), dtype=np.float32), item_emb=items, item_base=items, item_gates=empty,
                  item_experts=np.zeros((n, 0, d), dtype=np.float32), experts=(), user_ids=[],
                  item_ids=[str(i) for i in range(n)], seen_indptr=np.zeros(1, dtype=np.int64),
                  seen_indices=np.zeros(0, dtype=np.int64), popularity=np.zeros(n, dtype=np.int64), index=index)


def truth(items: np.ndarray, query: np.ndarray, allowed: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Brute force: allowed minus excluded, float64 scores, best first, ties by item index."""
    cand = np.setdiff1d(allowed, exclude)
    scores = items[cand].astype(np.float64) @ query.astype(np.float64)
    return cand[np.lexsort((cand, -scores))[:k]]


def measure(searcher: ItemSearcher, items: np.ndarray, queries: np.ndarray, allowed: list[np.ndarray],
            excludes: list[np.ndarray], k: int, mode: str) -> dict[str, Any]:
    times, recalls, exact = [], [], 0
    for q, al, ex in zip(queries, allowed, excludes):
        started = time.perf_counter()
        if mode == "unfiltered":
            ids, _ = searcher.rank(q, ex, k)
        else:
            ids, _ = searcher.rank(q, ex, k, allowed=al, mode=mode)
        times.append(time.perf_counter() - started)
        if mode != "unfiltered":
            want = truth(items, q, al, ex, k)
            recalls.append(len(set(ids.tolist()) & set(want.tolist())) / len(want))
            exact += int(np.array_equal(ids, want))
    ms = np.array(times) * 1e3
    return {"mode": mode, "queries": len(times), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "recall": float(np.mean(recalls)) if recalls else None,
            "exact_share": exact / len(times) if mode != "unfiltered" else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--exclude", type=int, default=1000)
    ap.add_argument("--values", type=int, default=100, help="attribute values (selectivity 1/values)")
    ap.add_argument("--indexes", default="flat,hnsw")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    setup_logging()
    limit_threads(1)
    items, queries = synthetic_embeddings(a.items, a.queries, seed=a.seed)
    rng = np.random.default_rng(a.seed)
    value = rng.integers(0, a.values, a.items)
    by_value = [np.flatnonzero(value == v) for v in range(a.values)]
    asked = rng.integers(0, a.values, a.queries)
    allowed = [by_value[v] for v in asked]
    # 1,000 excluded items per query, a tenth of them inside the allowed set (so they matter)
    excludes = [np.unique(np.concatenate([rng.choice(al, a.exclude // 10, replace=False),
                                          rng.choice(a.items, a.exclude - a.exclude // 10, replace=False)]))
                for al in allowed]
    rows = []
    for kind in a.indexes.split(","):
        started = time.perf_counter()
        index, info = build_index(items, exact_max_items=a.items if kind == "flat" else 0)
        log.info("%s index over %d items built in %.1f s", kind, a.items, time.perf_counter() - started)
        searcher = ItemSearcher(in_memory_bundle(items, index, info), threads=1)
        for mode in ("unfiltered", "brute", "selector"):
            measure(searcher, items, queries[:5], allowed[:5], excludes[:5], a.k, mode)  # warm-up
            row = {"index": kind, **measure(searcher, items, queries, allowed, excludes, a.k, mode)}
            rows.append(row)
            log.info("%s", row)
        base = next(r for r in rows if r["index"] == kind and r["mode"] == "unfiltered")
        for r in rows:
            if r["index"] == kind:
                r["p99_vs_unfiltered"] = r["p99_ms"] / base["p99_ms"]
        del index, searcher
    print(f"{'index':6} {'mode':11} {'p50 ms':>8} {'p99 ms':>8} {'p99 x unf.':>10} {'recall':>7} {'exact':>6}")
    for r in rows:
        rec = "-" if r["recall"] is None else f"{r['recall']:.4f}"
        ex = "-" if r["exact_share"] is None else f"{r['exact_share']:.3f}"
        print(f"{r['index']:6} {r['mode']:11} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['p99_vs_unfiltered']:10.2f} "
              f"{rec:>7} {ex:>6}")
    if a.json:
        write_json({"date": utc_now(), "machine": machine_info(), "items": a.items, "queries": a.queries, "k": a.k,
                    "selectivity": 1 / a.values, "exclude": a.exclude, "rows": rows}, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
