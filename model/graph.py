"""Graph utilities shared by the models: normalized sparse adjacencies and the
layer-mean propagation read-out."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from model.ops import csr


def to_csr(coo: torch.Tensor) -> torch.Tensor:
    """A sparse COO matrix as `csr` (coalesced first)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a = coo.coalesce().to_sparse_csr()
    return csr(a.crow_indices(), a.col_indices(), a.values(), tuple(a.shape))


def sym_normalize(edge_index: torch.Tensor, n_nodes: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """D^-1/2 A D^-1/2 as a sparse CSR tensor (isolated nodes stay zero)."""
    if weight is None:
        weight = torch.ones(edge_index.shape[1])
    deg = torch.zeros(n_nodes).scatter_add_(0, edge_index[0], weight)
    inv_sqrt = deg.pow(-0.5)
    inv_sqrt[torch.isinf(inv_sqrt)] = 0.0
    values = inv_sqrt[edge_index[0]] * weight * inv_sqrt[edge_index[1]]
    return to_csr(torch.sparse_coo_tensor(edge_index, values, (n_nodes, n_nodes), check_invariants=False))


def unique_pairs(pairs: np.ndarray, n_items: int) -> np.ndarray:
    """Distinct (user, item) rows sorted by user then item (a 1-D key sort: much
    faster than np.unique(axis=0) on every epoch's resampled graph)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    keys = pairs[:, 0] * max(n_items, 1) + pairs[:, 1]
    if np.all(keys[1:] > keys[:-1]):  # already distinct and sorted (every resampled graph)
        return pairs
    keys = np.unique(keys)
    return np.stack([keys // max(n_items, 1), keys % max(n_items, 1)], axis=1)


def bipartite_csr(
    train_edges: np.ndarray, n_users: int, n_items: int, item_extra_degree: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """D^-1/2 [[0, R], [R^T, 0]] D^-1/2 over users 0..U-1 then items, built straight
    into CSR from the sorted pairs (no COO coalesce: this runs every epoch).

    Item degrees are raised by `item_extra_degree` (the augmented graph counts its
    item-item block in them). Returns the matrix and every node's D^-1/2."""
    pairs = unique_pairs(train_edges, n_items)
    users, items = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
    user_count = torch.bincount(users, minlength=n_users)
    item_count = torch.bincount(items, minlength=n_items)
    deg = torch.cat([user_count, item_count]).float()
    deg[n_users:] += item_extra_degree
    inv_sqrt = deg.pow(-0.5)
    inv_sqrt[torch.isinf(inv_sqrt)] = 0.0
    values = inv_sqrt[users] * inv_sqrt[n_users + items]
    by_item = torch.as_tensor(np.argsort(pairs[:, 1], kind="stable"))  # (item, user) order
    crow = torch.zeros(n_users + n_items + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.cat([user_count, item_count]), 0)
    col = torch.cat([n_users + items, users[by_item]])
    val = torch.cat([values, values[by_item]])
    n = n_users + n_items
    return csr(crow, col, val, (n, n)), inv_sqrt


def normalized_bipartite(train_edges: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """LightGCN's normalized adjacency of the user-item graph."""
    return bipartite_csr(train_edges, n_users, n_items)[0]


def layer_mean(x: torch.Tensor, step: Callable[[torch.Tensor], torch.Tensor], n_layers: int) -> torch.Tensor:
    """LightGCN's read-out: the mean of x, step(x), step(step(x)), ... (n_layers + 1
    terms, layer 0 included); with step(z) = A z that is mean_l A^l x."""
    total = x
    for _ in range(n_layers):
        x = step(x)
        total = total + x
    return total / (n_layers + 1)
