"""The kernels of model/ops.py give the same values and gradients as the plain forms
they replace (indexing, per-row dot products, norms of gathered matrices, sparse
products)."""

import numpy as np
import pytest
import torch

from model.graph import unique_pairs
from model.losses import emb_norm_reg
from model.magnet.graphs import transpose_csr
from model.ops import dense_pair_scores, gathered_norm, pair_scores, spmm, take_rows, unique_ids


def _grads(fn, *leaves: torch.Tensor) -> list[torch.Tensor]:
    for leaf in leaves:
        leaf.grad = None
    fn().backward()
    return [leaf.grad.clone() for leaf in leaves]


def test_take_rows_is_indexing_with_the_same_gradient():
    table = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([[0, 6, 6], [2, 0, 5]])
    weights = torch.randn(2, 3, 3, dtype=torch.float64)
    assert torch.equal(take_rows(table, index), table[index])
    fast = _grads(lambda: (take_rows(table, index) * weights).sum(), table)[0]
    plain = _grads(lambda: (table[index] * weights).sum(), table)[0]
    assert torch.allclose(fast, plain)
    assert fast[6].abs().sum() > 0 and fast[1].abs().sum() == 0  # repeated rows accumulate, unused get none


@pytest.mark.parametrize("scores", [pair_scores, dense_pair_scores])
@pytest.mark.parametrize(
    "n_users, n_items, rows, cols",
    # (3, 4, 20, 5): more pairs than cells (the score matrix); (40, 50, 6, 2): per-row
    # products on the dense side, a sampled matmul on the CPU side
    [(3, 4, 20, 5), (40, 50, 6, 2), (12, 30, 25, 9), (7, 9, 10, 1)],
)
def test_pair_scores_match_per_row_dot_products(scores, n_users: int, n_items: int, rows: int, cols: int):
    gen = torch.Generator().manual_seed(0)
    e_u = torch.randn(n_users, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    e_i = torch.randn(n_items, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    u = torch.randint(0, n_users, (rows,), generator=gen)
    i = torch.randint(0, n_items, (rows, cols), generator=gen)
    i[:, -1] = i[:, 0]  # a repeated pair in every row: the gradients must add up
    u[-1] = u[0]  # and a repeated user
    weights = torch.randn(rows, cols, dtype=torch.float64, generator=gen)
    expected = torch.stack([torch.stack([e_u[u[b]] @ e_i[i[b, j]] for j in range(cols)]) for b in range(rows)])
    assert torch.allclose(scores(e_u, e_i, u, i), expected)
    fast = _grads(lambda: (scores(e_u, e_i, u, i) * weights).sum(), e_u, e_i)
    plain = _grads(lambda: (torch.einsum("bd,bnd->bn", e_u[u], e_i[i]) * weights).sum(), e_u, e_i)
    assert all(torch.allclose(a, b) for a, b in zip(fast, plain))


def test_gathered_norm_is_the_norm_of_the_gathered_rows():
    table = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([1, 1, 1, 8, 0, 3])
    assert torch.allclose(gathered_norm(table, index), torch.linalg.norm(table[index]))
    fast = _grads(lambda: gathered_norm(table, index), table)[0]
    plain = _grads(lambda: torch.linalg.norm(table[index]), table)[0]
    assert torch.allclose(fast, plain)
    # MMRec's EmbLoss: the norms summed, divided by the batch size
    users, items = torch.randn(5, 4, dtype=torch.float64), table.detach()
    u_idx, i_idx = torch.tensor([0, 4, 4]), torch.tensor([2, 2, 7])
    expected = (torch.linalg.norm(users[u_idx]) + torch.linalg.norm(items[i_idx])) / 3
    assert torch.allclose(emb_norm_reg((users, u_idx), (items, i_idx)), expected)


def test_gathered_norm_of_zero_rows_has_a_finite_gradient():
    table = torch.zeros(3, 2, requires_grad=True)
    gathered_norm(table, torch.tensor([0, 2])).backward()
    assert torch.isfinite(table.grad).all()


def test_unique_pairs_sorts_and_deduplicates_and_keeps_sorted_input():
    messy = np.array([[2, 1], [0, 3], [2, 1], [0, 0]])
    assert unique_pairs(messy, 4).tolist() == [[0, 0], [0, 3], [2, 1]]
    tidy = np.array([[0, 0], [0, 3], [2, 1]])
    assert unique_pairs(tidy, 4).tolist() == tidy.tolist()
    assert unique_pairs(np.array([[1, 2], [1, 2]]), 4).tolist() == [[1, 2]]


def test_unique_ids_match_torch_unique():
    ids = torch.tensor([5, 0, 5, 3, 9, 0, 3])
    uniq, inverse = unique_ids(ids, 12)
    assert uniq.tolist() == [0, 3, 5, 9]
    assert torch.equal(uniq[inverse], ids)
    expected = torch.unique(ids, return_inverse=True)
    assert torch.equal(uniq, expected[0]) and torch.equal(inverse, expected[1])


def test_training_steps_run_without_onednn_and_restore_the_flag():
    from offline.train import without_onednn

    before = torch.backends.mkldnn.enabled
    with without_onednn():
        assert torch.backends.mkldnn.enabled is False
    assert torch.backends.mkldnn.enabled == before


def test_custom_spmm_backward_matches_autograd() -> None:
    a = torch.rand(6, 4)
    a[a < 0.5] = 0
    a_csr = a.to_sparse_csr()
    x = torch.randn(4, 3, requires_grad=True)
    spmm(a_csr, x, transpose_csr(a_csr)).pow(2).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    (a @ x).pow(2).sum().backward()
    assert torch.allclose(ours, x.grad, atol=1e-6)
