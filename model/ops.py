"""Tensor kernels: each computes a plain expression, only faster on the CPU.

Every function here equals the expression its docstring names, in value and in
gradient; tests/test_tensor_ops.py checks each against that plain form. Callers
write the fast form only where it is measured to matter (the training step) and
plain indexing everywhere else.

One idiom needs a word, since it is on every batch gather of the training step:
``take_rows(x, i)`` is ``x[i]``. Plain indexing's backward is an accumulating
``index_put_``; ``index_select``'s is an ``index_add_``, several times faster on
the CPU for the repeated rows of a batch. Read ``take_rows(x, i)`` as ``x[i]``.

What each kernel saves was measured on MAGNET's ml100k training step and is recorded
in docs/benchmarks.md ("Training cost"), not here, where figures would go stale.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


def csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """The sparse CSR matrix (crow, col, values), with int32 indices when they fit:
    MKL's sparse kernels take int32 and convert int64 indices on every product."""
    if col.numel() < 2**31 - 1 and max(size) < 2**31 - 1:
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    with warnings.catch_warnings():  # CSR is "beta" in torch but stable for sparse.mm
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size)


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` for an integer index of any shape (see the module docstring)."""
    return x.index_select(0, index.reshape(-1)).reshape(*index.shape, *x.shape[1:])


def unique_ids(ids: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``torch.unique(ids, return_inverse=True)`` for ids in [0, n), by counting into
    a length-n table instead of sorting: O(n + len(ids))."""
    seen = torch.bincount(ids, minlength=n) > 0
    rank = torch.cumsum(seen, 0) - 1
    return torch.nonzero(seen).squeeze(1), rank[ids]


def gathered_norm(table: Tensor, index: Tensor) -> Tensor:
    """``torch.linalg.norm(table[index])`` (Frobenius) without gathering:
    sqrt(sum_j count_j ||table_j||^2), count_j = how often row j is in index."""
    counts = torch.bincount(index.reshape(-1), minlength=table.shape[0]).to(table.dtype)
    return (counts * table.pow(2).sum(1)).sum().clamp_min(1e-30).sqrt()


# ----------------------------------------------------------------- batch scores


def pair_scores(e_u: Tensor, e_i: Tensor, user_index: Tensor, item_index: Tensor) -> Tensor:
    """``s[b, j] = e_u[user_index[b]] . e_i[item_index[b, j]]`` for user_index [B] and
    item_index [B, n], i.e. ``einsum("bd,bnd->bn", e_u[user_index], e_i[item_index])``.

    On the CPU the B x n pairs are one sparse pattern: `SampledPairScores` computes
    them as a sampled matmul, with no [U, I] or [B, n, d] intermediate. Elsewhere
    (CUDA), and for patterns with more entries than the matrix has cells (torch's
    sampled matmul refuses those; the score matrix is cheaper there anyway):
    `dense_pair_scores`."""
    if e_u.device.type == "cpu" and 0 < item_index.numel() <= e_u.shape[0] * e_i.shape[0]:
        return SampledPairScores.apply(e_u, e_i, user_index, item_index)
    return dense_pair_scores(e_u, e_i, user_index, item_index)


def dense_pair_scores(e_u: Tensor, e_i: Tensor, user_index: Tensor, item_index: Tensor) -> Tensor:
    """`pair_scores` from dense products: cells of the score matrix e_u e_i^T when
    that is smaller than the gathered rows, else per-row dot products."""
    n_items, dim = e_i.shape
    if e_u.shape[0] * n_items <= item_index.numel() * dim:
        flat = (user_index.reshape(-1, 1) * n_items + item_index).reshape(-1)
        return (e_u @ e_i.T).reshape(-1).index_select(0, flat).reshape(item_index.shape)
    return (take_rows(e_i, item_index) * take_rows(e_u, user_index).unsqueeze(1)).sum(-1)


def grouped_csr(
    keys: Tensor, cols: Tensor, values: Tensor, n_rows: int, n_cols: int, width: int = 1
) -> tuple[Tensor, Tensor]:
    """The [n_rows, n_cols] CSR matrix with row keys[k] holding (cols[k], values[k]),
    each group `width` entries wide, and the stable order that groups them.
    Duplicate columns stay separate entries: the sparse products add them up."""
    order = torch.argsort(keys.to(torch.int32), stable=True)  # int32 keys sort faster; the order is int64
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=keys.device)
    crow[1:] = torch.cumsum(torch.bincount(keys, minlength=n_rows) * width, 0)
    return csr(crow, take_rows(cols, order).reshape(-1), take_rows(values, order).reshape(-1), (n_rows, n_cols)), order


class SampledPairScores(torch.autograd.Function):
    """`pair_scores` as a sampled dense-dense matmul: with P the [U, I] pattern of the
    batch's (user, item) pairs, the scores are the entries of P o (e_u e_i^T), and the
    gradients are G e_i and G^T e_u for G the sparse matrix of the incoming grads."""

    @staticmethod
    def forward(ctx, e_u: Tensor, e_i: Tensor, user_index: Tensor, item_index: Tensor):  # noqa: D102
        rows, width = item_index.shape
        zeros = e_u.new_zeros(rows, width)
        pattern, by_user = grouped_csr(user_index, item_index, zeros, e_u.shape[0], e_i.shape[0], width)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            sampled = torch.sparse.sampled_addmm(pattern, e_u, e_i.T, beta=0.0).values()
        scores = torch.empty_like(zeros).index_copy_(0, by_user, sampled.reshape(rows, width))
        users = take_rows(user_index, by_user).unsqueeze(1).expand(rows, width).reshape(-1)  # each entry's row
        ctx.save_for_backward(e_u, e_i, pattern.col_indices(), pattern.crow_indices(), users, by_user)
        return scores

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        e_u, e_i, cols, crow, users, by_user = ctx.saved_tensors
        n_u, n_i = e_u.shape[0], e_i.shape[0]
        grad = take_rows(grad.to(e_u.dtype), by_user).reshape(-1)  # [B, n] rows into the pattern's order
        d_u = d_i = None
        if ctx.needs_input_grad[0]:  # d e_u = G @ e_i
            d_u = torch.sparse.mm(csr(crow, cols, grad, (n_u, n_i)), e_i)
        if ctx.needs_input_grad[1]:  # d e_i = G^T @ e_u
            g_t, _ = grouped_csr(cols, users, grad, n_i, n_u)
            d_i = torch.sparse.mm(g_t, e_u)
        return d_u, d_i, None, None


# ----------------------------------------------------------------- sparse products


class SparseMatmul(torch.autograd.Function):
    """``a @ x`` for a sparse CSR a, whose backward multiplies by a precomputed a^T:
    torch's own backward re-sorts and transposes the CSR matrix on every call."""

    @staticmethod
    def forward(ctx, a: Tensor, a_t: Tensor, x: Tensor) -> Tensor:  # noqa: D102
        ctx.a_t = a_t
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return None, None, torch.sparse.mm(ctx.a_t, grad)


def spmm(a: Tensor, x: Tensor, a_t: Tensor | None = None) -> Tensor:
    """``a @ x`` for a sparse CSR a and dense x; pass a_t = a^T unless a is symmetric."""
    if not x.requires_grad:
        return torch.sparse.mm(a, x)
    return SparseMatmul.apply(a, a if a_t is None else a_t, x)
