"""LightGCN on a graph small enough to check by hand."""

import math

import numpy as np
import pytest
import torch

from model.graph import bipartite_csr, normalized_bipartite, sym_normalize
from model.lightgcn import LightGCN, LightGCNConfig

EDGES = np.array([[0, 0], [0, 1], [1, 0], [0, 0]])  # the repeated pair counts once


def test_normalized_adjacency_by_hand():
    adj = normalized_bipartite(EDGES, n_users=2, n_items=2).to_dense()
    # nodes: u0=0, u1=1, i0=2, i1=3; degrees u0=2, u1=1, i0=2, i1=1
    expected = torch.zeros(4, 4)
    for a, b, value in [(0, 2, 1 / math.sqrt(2 * 2)), (0, 3, 1 / math.sqrt(2 * 1)), (1, 2, 1 / math.sqrt(1 * 2))]:
        expected[a, b] = expected[b, a] = value
    assert torch.allclose(adj, expected, atol=1e-6)


def test_propagation_is_the_layer_mean_of_dense_powers():
    torch.manual_seed(0)
    model = LightGCN(2, 2, EDGES, LightGCNConfig(dim=3, n_layers=2))
    users, items = model.embeddings()
    a = normalized_bipartite(EDGES, 2, 2).to_dense().numpy()
    x0 = torch.cat([model.user_emb, model.item_emb]).detach().numpy()
    mean = (x0 + a @ x0 + a @ a @ x0) / 3
    assert np.allclose(torch.cat([users, items]).numpy(), mean, atol=1e-6)


def test_loss_is_bpr_plus_mmrec_embedding_norm():
    torch.manual_seed(0)
    cfg = LightGCNConfig(dim=4, n_layers=1, reg_weight=0.5)
    model = LightGCN(2, 2, EDGES, cfg)
    u, p, n = torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([1, 1])
    loss, logs = model.loss(u, p, n)
    eu, ei = model.embeddings()
    diff = (eu[u] * ei[p]).sum(1) - (eu[u] * ei[n]).sum(1)
    bpr = -torch.log(torch.sigmoid(diff)).mean()
    reg = (model.user_emb[u].norm() + model.item_emb[p].norm() + model.item_emb[n].norm()) / 2
    assert torch.allclose(loss, bpr + 0.5 * reg, atol=1e-6)
    assert abs(logs["bpr"] - float(bpr)) < 1e-6


def test_export_has_no_experts_and_matches_embeddings():
    model = LightGCN(2, 2, EDGES, LightGCNConfig(dim=3))
    arrays = model.export_arrays()
    _, items = model.embeddings()
    assert arrays["item_gates"].shape == (2, 0) and arrays["item_experts"].shape == (2, 0, 3)
    assert np.allclose(arrays["item_emb"], items.numpy()) and np.allclose(arrays["item_base"], arrays["item_emb"])


def test_direct_csr_bipartite_matches_the_coo_route_with_duplicates_and_isolated_nodes() -> None:
    """bipartite_csr builds CSR straight from sorted pairs; it must equal
    D^-1/2 A D^-1/2 built the plain way (duplicates merged, isolated rows zero),
    with and without extra item degree."""
    rng = np.random.default_rng(3)
    n_users, n_items = 7, 9  # user 6 and item 8 never appear
    edges = np.stack([rng.integers(0, 6, 40), rng.integers(0, 8, 40)], 1)
    pairs = np.unique(edges, axis=0)
    src = torch.as_tensor(np.concatenate([pairs[:, 0], pairs[:, 1] + n_users]))
    dst = torch.as_tensor(np.concatenate([pairs[:, 1] + n_users, pairs[:, 0]]))
    expected = sym_normalize(torch.stack([src, dst]), n_users + n_items).to_dense()
    adj, _ = bipartite_csr(edges, n_users, n_items)
    assert torch.allclose(adj.to_dense(), expected, atol=1e-7)
    assert adj.to_dense()[6].abs().sum() == 0 and adj.to_dense()[n_users + 8].abs().sum() == 0
    raised, inv_sqrt = bipartite_csr(edges, n_users, n_items, item_extra_degree=2.0)
    deg = np.concatenate([np.bincount(pairs[:, 0], minlength=n_users), np.bincount(pairs[:, 1], minlength=n_items) + 2.0])
    u, i = pairs[0]
    assert raised.to_dense()[u, n_users + i].item() == pytest.approx(1 / np.sqrt(deg[u] * deg[n_users + i]))
    assert inv_sqrt[n_users + 8].item() == pytest.approx(1 / np.sqrt(2.0))
