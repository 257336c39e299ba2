"""Top-K retrieval through the bundle's FAISS index.

FAISS proposes candidates; every candidate is then re-scored with `score_items`,
the one scoring function /recommend and /explain share, so the score a client sees
for a pair is identical in both. Training items are removed after the search, and
the search is made deep enough (K + #seen + a margin) that removing them never
leaves fewer than K results; an approximate index that still comes up short is
searched deeper, and as a last resort the catalog is scanned exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.bundle import Bundle


_omp = threading.local()


def _set_omp_threads(faiss: Any, n: int) -> None:
    """OpenMP's thread count is per calling thread, so set it in each thread that searches."""
    if getattr(_omp, "n", None) != n:
        faiss.omp_set_num_threads(n)
        _omp.n = n


def score_items(user_vec: np.ndarray, item_emb: np.ndarray, items: np.ndarray) -> np.ndarray:
    """e_u . e_i for each item, accumulated in float64 row by row (deterministic per pair)."""
    rows = item_emb[np.asarray(items, dtype=np.int64)].astype(np.float64)
    return (rows * user_vec.astype(np.float64)).sum(axis=1)


def drop_excluded(cand: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """`cand` without the items in `exclude`, order kept: ``cand[~np.isin(cand, exclude)]``
    by a sort and a binary search, a fraction of np.isin's general machinery on the
    computed /recommend path (timed in docs/benchmarks.md, "Serving")."""
    if not exclude.size:
        return cand
    ex = np.sort(exclude)
    pos = np.searchsorted(ex, cand)
    np.minimum(pos, ex.size - 1, out=pos)
    return cand[ex[pos] != cand]


def _mask(n: int, items: np.ndarray) -> np.ndarray:
    """A boolean [n] mask, True at `items`."""
    keep = np.zeros(n, dtype=bool)
    keep[np.asarray(items, dtype=np.int64)] = True
    return keep


def _top(cand: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k by score, ties broken by item index so results are reproducible."""
    order = np.lexsort((cand, -scores))[:k]
    return cand[order], scores[order]


class ItemSearcher:
    """Recommend / similar-items / popular lists for one bundle (read-only, thread-safe)."""

    def __init__(self, bundle: Bundle, *, margin: int = 16, threads: int = 1, brute_force_max: int = 20_000) -> None:
        import faiss

        self.bundle = bundle
        self.brute_force_max = brute_force_max
        self.index = bundle.index
        self.margin = margin
        self.threads = threads
        info = bundle.index_info
        self.exact = bool(info.get("exact", info.get("type") == "flat"))
        self._ef_search = int(info.get("ef_search", 64))
        self._hnsw = isinstance(faiss.downcast_index(self.index), faiss.IndexHNSW)
        self._faiss = faiss
        # Popularity order, computed once: most trained-on first, ties by item index.
        pop = bundle.popularity.astype(np.float64)
        self.popular_order = np.lexsort((np.arange(pop.size), -pop))
        self.popular_scores = pop[self.popular_order]

    # ---------------------------------------------------------------- internals

    def _search(self, queries: np.ndarray, depth: int) -> np.ndarray:
        _set_omp_threads(self._faiss, self.threads)
        params: Any = None
        if self._hnsw:
            params = self._faiss.SearchParametersHNSW()
            params.efSearch = max(self._ef_search, depth)
        _, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), depth, params=params)
        return ids

    def _ranked(
        self,
        queries: np.ndarray,
        excludes: Sequence[np.ndarray],
        k: int,
        distinct: bool = False,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k items per query vector with each query's `excludes` removed (`distinct`: the
        caller's excludes hold each item once already)."""
        n = self.bundle.n_items
        item_emb = self.bundle.item_emb
        wanted = [min(k, n - (ex.size if distinct else int(np.unique(ex).size))) for ex in excludes]
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(queries)
        pending = list(range(len(queries)))
        depth = min(n, k + max((ex.size for ex in excludes), default=0) + self.margin)
        while pending:
            ids = self._search(queries[pending], depth)
            retry = []
            for row, j in enumerate(pending):
                cand = ids[row]
                cand = cand[cand >= 0]
                if excludes[j].size:
                    cand = drop_excluded(cand, excludes[j])
                if cand.size < wanted[j]:
                    if depth < n:
                        retry.append(j)
                        continue
                    # The graph could not reach enough items even at full depth: scan exactly.
                    cand = np.setdiff1d(np.arange(n), excludes[j])
                out[j] = _top(cand, score_items(queries[j], item_emb, cand), k)
            pending = retry
            depth = min(n, depth * 2)
        return out  # type: ignore[return-value]

    # ---------------------------------------------------------------- public

    def recommend(self, users: Sequence[int], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k unseen items (internal indices, scores) for each internal user index."""
        if not len(users):
            return []
        users = np.asarray(users, dtype=np.int64)
        seen = [self.bundle.seen(int(u)) for u in users]
        return self._ranked(self.bundle.user_emb[users], seen, k)

    def similar(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k items whose embeddings have the largest inner product with `item`'s (itself excluded)."""
        query = self.bundle.item_emb[[item]]
        return self._ranked(query, [np.array([item], dtype=np.int64)], k)[0]

    def popular(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most trained-on items and their training counts (the cold-start fallback)."""
        return self.popular_order[:k], self.popular_scores[:k]

    def popular_among(self, k: int, exclude: np.ndarray, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The k most trained-on items of `allowed` (all items when None) without `exclude`."""
        if allowed is None and not exclude.size:
            return self.popular(k)
        keep = np.ones(self.bundle.n_items, dtype=bool) if allowed is None else _mask(self.bundle.n_items, allowed)
        keep[exclude] = False
        order = self.popular_order[keep[self.popular_order]][:k]
        return order, self.bundle.popularity.astype(np.float64)[order]

    def _scan(self, query: np.ndarray, cand: np.ndarray, k: int, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of `cand`, working in its size (never the catalogue's): small sets are scored
        with `score_items` directly; larger ones are scored in float32 chunk by chunk, the best
        k + margin of each kept, and those re-scored - the flat index's float32 proposal and
        float64 rescoring, without a catalogue-sized mask or a float64 copy of the set."""
        item_emb = self.bundle.item_emb
        depth = k + self.margin
        if cand.size <= max(4 * depth, 4096):
            return _top(cand, score_items(query, item_emb, cand), k)
        keep = []
        for start in range(0, cand.size, chunk):
            part = cand[start:start + chunk]
            scores = item_emb[part] @ query
            if part.size > depth:
                part = part[np.argpartition(-scores, depth - 1)[:depth]]
            keep.append(part)
        best = np.concatenate(keep)
        return _top(best, score_items(query, item_emb, best), k)

    def rank(self, query: np.ndarray, exclude: np.ndarray, k: int, allowed: np.ndarray | None = None,
             mode: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for one query vector among `allowed` (all items when None) without `exclude`
        (each a list of distinct items; see `service.answers.compute_one`).

        With a filter the result is exact whatever the index (docs/benchmarks.md, "Filtered
        retrieval"): an allowed set of at most `brute_force_max` items, any allowed set under an
        approximate (HNSW) index, or ``mode="brute"`` is scanned in full (`_scan`); a wider one
        under the exact flat index is searched with a FAISS ID selector (a bitmap of the allowed
        items minus the excluded ones; ``mode="faiss"`` forces it, also on HNSW, where it is
        approximate) and the candidates re-scored, so no excluded or filtered-out item can take
        a place in the result. No filter: the plain search with `exclude` removed after it (made
        deep enough, see `_ranked`)."""
        n = self.bundle.n_items
        query = np.asarray(query, dtype=np.float32).reshape(1, -1)
        exclude = np.asarray(exclude, dtype=np.int64)
        if allowed is None and mode == "auto":
            return self._ranked(query, [exclude], k, distinct=True)[0]
        if mode == "brute" or (mode == "auto" and allowed is not None
                               and (allowed.size <= self.brute_force_max or not self.exact)):
            cand = np.setdiff1d(np.arange(n), exclude) if allowed is None else drop_excluded(allowed, exclude)
            return self._scan(query[0], cand, k)
        keep = np.ones(n, dtype=bool) if allowed is None else _mask(n, allowed)
        keep[exclude] = False
        remaining = int(keep.sum())
        wanted = min(k, remaining)
        if not wanted:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        _set_omp_threads(self._faiss, self.threads)
        bitmap = np.packbits(keep, bitorder="little")  # referenced until the search returns: FAISS keeps a raw pointer
        selector = self._faiss.IDSelectorBitmap(n, self._faiss.swig_ptr(bitmap))
        depth = min(remaining, k + self.margin)
        if self._hnsw:
            params: Any = self._faiss.SearchParametersHNSW()
            params.efSearch = max(self._ef_search, depth)
        else:
            params = self._faiss.SearchParameters()
        params.sel = selector
        _, ids = self.index.search(query, depth, params=params)
        del selector, bitmap
        cand = ids[0][ids[0] >= 0]
        if cand.size < wanted:  # an approximate graph that could not reach enough allowed items
            cand = np.flatnonzero(keep)
        return _top(cand, score_items(query[0], self.bundle.item_emb, cand), k)
