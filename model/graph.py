"""Graph utilities shared by the models: normalized sparse adjacencies."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch_geometric.utils import to_undirected


def sym_normalize(edge_index: torch.Tensor, n_nodes: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """D^-1/2 A D^-1/2 as a sparse CSR tensor (isolated nodes stay zero)."""
    if weight is None:
        weight = torch.ones(edge_index.shape[1])
    deg = torch.zeros(n_nodes).scatter_add_(0, edge_index[0], weight)
    inv_sqrt = deg.pow(-0.5)
    inv_sqrt[torch.isinf(inv_sqrt)] = 0.0
    values = inv_sqrt[edge_index[0]] * weight * inv_sqrt[edge_index[1]]
    adj = torch.sparse_coo_tensor(edge_index, values, (n_nodes, n_nodes), check_invariants=False).coalesce()
    with warnings.catch_warnings():  # CSR is "beta" in torch but stable for sparse.mm
        warnings.simplefilter("ignore", UserWarning)
        return adj.to_sparse_csr()


def bipartite_edge_index(train_edges: np.ndarray, n_users: int) -> torch.Tensor:
    """Undirected user-item edges over one node space: users 0..U-1, items U..U+I-1."""
    pairs = np.unique(np.asarray(train_edges, dtype=np.int64), axis=0)
    src = torch.as_tensor(pairs[:, 0])
    dst = torch.as_tensor(pairs[:, 1] + n_users)
    return to_undirected(torch.stack([src, dst]))


def normalized_bipartite(train_edges: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """LightGCN's normalized adjacency of the user-item graph."""
    return sym_normalize(bipartite_edge_index(train_edges, n_users), n_users + n_items)


def layer_mean_propagate(adj: torch.Tensor, x: torch.Tensor, n_layers: int) -> torch.Tensor:
    """LightGCN's read-out: mean of x, Ax, ..., A^L x (layer 0 included)."""
    total, h = x, x
    for _ in range(n_layers):
        h = torch.sparse.mm(adj, h)
        total = total + h
    return total / (n_layers + 1)
