"""LightGCN on a graph small enough to check by hand."""

import math

import numpy as np
import torch

from model.graph import normalized_bipartite
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
