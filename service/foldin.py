"""Fold-in: a user vector computed at request time from a list of items, with the
bundle's item vectors fixed (numpy only).

Three methods, compared in docs/benchmarks.md ("Online fold-in"). A user the model never saw
is folded in with MAGNET_FOLDIN_METHOD and a known user's trained vector is moved with
MAGNET_FOLDIN_KNOWN_METHOD; both default to ``graph`` (map ridge 0.0003), the choice of the
validation checks (bench.foldin_check) on two model configurations:

- ``mean``: the mean of the history's item vectors e_i.
- ``als``: implicit-ALS fold-in against every item vector: the x minimising
  sum_i c_ui (p_ui - x . e_i)^2 + reg |x|^2 with p = 1 on the history, 0 elsewhere,
  c = 1 + alpha on the history, 1 elsewhere:
  x = (G + alpha H^T H + reg I)^-1 (1 + alpha) H^T 1, where G = Y^T Y is the Gram
  matrix of all item vectors (computed once, at load).
- ``graph``: MAGNET's user side read through its graph: a user's representation comes
  from its items by normalised propagation, a_u = sum_i e_i / sqrt(d_i + 1) / sqrt(|u|)
  (d_i = the item's training degree), and a ridge linear map W fitted at load on the
  trained users (e_u ~ a_u W, regularisation MAGNET_FOLDIN_GRAPH_REG x #users) carries it
  into the trained users' space, scale included.

A known user whose newer items the model has not seen (events, a request's history)
keeps its trained vector and moves by what those items change in the fold-in of its
training items: e = e_u + f(seen + new) - f(seen). With nothing new it is e_u exactly;
for ``graph`` both terms live in the trained users' space (the map was fitted there).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from service.bundle import Bundle

log = logging.getLogger(__name__)

Method = Literal["mean", "als", "graph"]
METHODS: tuple[Method, ...] = ("mean", "als", "graph")


class FoldIn:
    """Fold-in for one bundle; everything a method needs is precomputed here (read-only, thread-safe)."""

    def __init__(self, bundle: Bundle, *, method: Method = "graph", known_method: Method | None = None,
                 als_reg: float = 1.0, als_alpha: float = 1.0, graph_reg: float = 0.0003) -> None:
        known_method = known_method or method
        for m in (method, known_method):
            if m not in METHODS:
                raise ValueError(f"unknown fold-in method {m!r} (known: {', '.join(METHODS)})")
        self.bundle = bundle
        self.method = method
        self.known_method = known_method
        self.als_reg = als_reg
        self.als_alpha = als_alpha
        self._items = bundle.item_emb.astype(np.float64)
        dim = bundle.dim
        uses = {method, known_method}
        self._gram = self._items.T @ self._items if "als" in uses else None
        degree = np.bincount(bundle.seen_indices, minlength=bundle.n_items).astype(np.float64)
        self._inv_sqrt_deg = 1.0 / np.sqrt(degree + 1.0)
        self._map = self._fit_graph_map(graph_reg) if "graph" in uses else np.eye(dim)

    # ---------------------------------------------------------------- graph method

    def aggregate(self, items: np.ndarray) -> np.ndarray:
        """a = sum_i e_i / sqrt(d_i + 1) / sqrt(n): the normalised propagation of `items`."""
        if not items.size:
            return np.zeros(self.bundle.dim)
        return (self._items[items] * self._inv_sqrt_deg[items, None]).sum(axis=0) / np.sqrt(items.size)

    def _fit_graph_map(self, reg: float) -> np.ndarray:
        """Ridge W with e_u ~ a_u W over the trained users that have training items."""
        b = self.bundle
        counts = np.diff(b.seen_indptr)
        users = np.flatnonzero(counts > 0)
        dim = b.dim
        if not users.size:
            return np.eye(dim)
        weighted = self._items[b.seen_indices] * self._inv_sqrt_deg[b.seen_indices, None]
        sums = np.add.reduceat(weighted, b.seen_indptr[users], axis=0) if weighted.size else np.zeros((0, dim))
        x = sums / np.sqrt(counts[users])[:, None]
        y = b.user_emb[users].astype(np.float64)
        w = np.linalg.solve(x.T @ x + reg * users.size * np.eye(dim), x.T @ y)
        residual = y - x @ w
        total = ((y - y.mean(axis=0)) ** 2).sum()
        log.info("fold-in map fitted", extra={"users": int(users.size),
                                              "r2": round(float(1 - (residual**2).sum() / total), 4) if total else None})
        return w

    # ---------------------------------------------------------------- public

    def vector(self, items: np.ndarray, method: Method | None = None) -> np.ndarray:
        """f(items): the folded vector (float64 [dim]) of a set of internal item indices by `method`
        (default: the new-user method); zeros for none."""
        method = method or self.method
        items = np.unique(np.asarray(items, dtype=np.int64))
        dim = self.bundle.dim
        if not items.size:
            return np.zeros(dim)
        if method == "mean":
            return self._items[items].mean(axis=0)
        if method == "als":
            h = self._items[items]
            a = self._gram + self.als_alpha * (h.T @ h) + self.als_reg * np.eye(dim)
            return np.linalg.solve(a, (1.0 + self.als_alpha) * h.sum(axis=0))
        return self.aggregate(items) @ self._map

    def user_vector(self, user: int | None, new_items: np.ndarray) -> np.ndarray | None:
        """The vector a request ranks with (float32 [dim]): a known `user`'s trained vector moved by
        `new_items` (see the module docstring), or an unknown user's fold-in of `new_items`; None when
        an unknown user has nothing to fold in."""
        new_items = np.asarray(new_items, dtype=np.int64)
        b = self.bundle
        if user is None:
            if not new_items.size:
                return None
            return self.vector(new_items).astype(np.float32)
        base = b.user_emb[user]
        if not new_items.size:
            return base
        seen = b.seen(user)
        both = np.union1d(seen, new_items)
        if both.size == np.unique(seen).size:  # nothing the model has not seen already
            return base
        m = self.known_method
        moved = base.astype(np.float64) + self.vector(both, m) - self.vector(seen, m)
        return moved.astype(np.float32)
