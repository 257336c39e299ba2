"""The graphs MAGNET propagates over: the normalized user-item graph, frozen
per-modality item-item kNN graphs, and the content-augmented block graph.

The augmented graph [[0, R], [R^T, lambda * S]] with S = sum_m softmax(a)_m S^m is
normalized by the degrees D_R + lambda (per item): each S^m is symmetric-normalized
with spectral radius 1, so D - A stays positive semi-definite and propagation never
blows up. Because those degrees do not depend on a, the normalized matrix splits into
one fixed sparse bipartite part plus lambda-scaled fixed S^m parts; propagation runs
each part separately and mixes the S^m results with softmax(a). That keeps the
mixture differentiable without rebuilding a sparse matrix per step.
"""

from __future__ import annotations

import numpy as np
import torch

from model.graph import bipartite_csr, sym_normalize, to_csr, unique_pairs
from model.ops import csr


def knn_edges(features: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Undirected edge_index of the top-k cosine neighbours of every row (self
    excluded), computed in row chunks so large catalogues never build I x I."""
    n = features.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.empty(2, 0, dtype=torch.long)
    x = torch.nn.functional.normalize(features.float(), dim=1)
    cols = []
    for start in range(0, n, chunk):
        sim = x[start : start + chunk] @ x.T
        rows = torch.arange(start, min(start + chunk, n))
        sim[rows - start, rows] = -float("inf")
        cols.append(sim.topk(k, dim=1).indices)
    dst = torch.cat(cols).reshape(-1)
    src = torch.arange(n).repeat_interleave(k)
    edges = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    return torch.unique(edges, dim=1)


def knn_graph(features: torch.Tensor, k: int) -> torch.Tensor:
    """S^m: symmetric-normalized top-k cosine kNN graph, a sparse CSR [I, I]."""
    return sym_normalize(knn_edges(features, k), features.shape[0])


def augmented_parts(
    train_edges: np.ndarray,
    n_users: int,
    n_items: int,
    knn: list[torch.Tensor],
    content_weight: float,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Fixed pieces of the normalized augmented graph.

    Returns the bipartite part over users+items (item degrees raised by lambda) and,
    per modality, lambda * D^-1/2 S^m D^-1/2 over items only."""
    bipartite, inv_sqrt = bipartite_csr(train_edges, n_users, n_items, item_extra_degree=content_weight)
    item_scale = inv_sqrt[n_users:]
    parts = []
    for s in knn:  # same sparsity as S^m, values rescaled: no re-sorting
        crow, col = s.crow_indices(), s.col_indices()
        row = torch.repeat_interleave(torch.arange(n_items), crow.diff().long())
        scaled = content_weight * item_scale[row] * s.values() * item_scale[col]
        parts.append(csr(crow, col, scaled, (n_items, n_items)))
    return bipartite, parts


def user_mean_operator(train_edges: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """Row-normalized R (sparse CSR [U, I]): R_mean @ P is each user's mean over
    their training items' rows of P."""
    pairs = unique_pairs(train_edges, n_items)
    users = torch.as_tensor(pairs[:, 0])
    items = torch.as_tensor(pairs[:, 1])
    counts = torch.bincount(users, minlength=n_users).float().clamp(min=1)
    values = 1.0 / counts[users]
    index = torch.stack([users, items])
    return to_csr(torch.sparse_coo_tensor(index, values, (n_users, n_items), check_invariants=False))


def transpose_csr(a: torch.Tensor) -> torch.Tensor:
    """a^T as CSR, computed once (for `spmm`'s backward)."""
    return to_csr(a.to_sparse_coo().t())


def degree_sensitive_prune(
    train_edges: np.ndarray, n_users: int, n_items: int, drop: float, generator: torch.Generator
) -> np.ndarray:
    """Keeps (1 - drop) of the unique user-item pairs, sampled without replacement
    with probability proportional to 1/sqrt(d_u d_i) (FREEDOM's degree-sensitive
    pruning): edges between hubs are the redundant ones, tail edges survive."""
    pairs = unique_pairs(train_edges, n_items)
    if drop <= 0 or len(pairs) == 0:
        return pairs
    du = np.bincount(pairs[:, 0], minlength=n_users)[pairs[:, 0]]
    di = np.bincount(pairs[:, 1], minlength=n_items)[pairs[:, 1]]
    weight = 1.0 / np.sqrt(du * di)
    keep = max(1, int(round(len(pairs) * (1.0 - drop))))
    return pairs[np.sort(weighted_sample(weight, keep, generator))]


def weighted_sample(weight: np.ndarray, k: int, generator: torch.Generator) -> np.ndarray:
    """k distinct indices drawn without replacement with probability proportional to
    weight, as torch.multinomial(replacement=False) draws them, by Efraimidis-Spirakis
    keys log(u) / w: the k largest keys are such a sample. One uniform per index and a
    partition instead of k sequential draws (timed in docs/benchmarks.md)."""
    if k >= len(weight):
        return np.arange(len(weight))
    u = torch.rand(len(weight), generator=generator, dtype=torch.float64).numpy()
    keys = np.log(u) / weight
    return np.argpartition(-keys, k - 1)[:k]
