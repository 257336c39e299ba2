"""The interface every trainable model implements, so one trainer, evaluator and
exporter serve them all (see docs/architecture.md)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from model.graph import csr


class Recommender(torch.nn.Module):
    """A dot-product recommender: s(u, i) = e_u . e_i.

    Subclasses implement `loss` (one BPR step with its regularizers), `embeddings`
    (final e_u, e_i) and `export_arrays` (what serving and explanations need).
    """

    experts: list[dict] = []
    n_negatives: int = 1  # negatives the trainer draws per positive; neg is [B] when 1, else [B, n]

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def forward(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor):  # noqa: D102
        return self.loss(users, pos, neg)

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def epoch_end(self, epoch: int) -> dict:
        """Called once per epoch after training steps; returns values to log."""
        return {}

    def eval_logs(self) -> dict:
        """Called after each validation pass; returns values to log that the pass's
        `embeddings()` computed on the way."""
        return {}

    @torch.no_grad()
    def export_arrays(self) -> dict[str, np.ndarray]:
        """Default for expert-less models: item_base = item_emb, zero experts."""
        users, items = self.embeddings()
        items_np = items.float().cpu().numpy()
        n, d = items_np.shape
        return {
            "user_emb": users.float().cpu().numpy(),
            "item_emb": items_np,
            "item_base": items_np,
            "item_gates": np.zeros((n, 0), dtype=np.float32),
            "item_experts": np.zeros((n, 0, d), dtype=np.float32),
        }


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(s_pos - s_neg), averaged; softplus form is the stable one."""
    return torch.nn.functional.softplus(neg_scores - pos_scores).mean()


def ranking_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor, kind: str = "bpr", temperature: float = 1.0) -> torch.Tensor:
    """The pairwise loss over one positive [B] and n sampled negatives [B] or [B, n].

    - ``bpr``: BPR averaged over the negatives;
    - ``hard``: BPR on the highest-scoring negative of each row (dynamic negative
      sampling, Zhang et al. 2013): uniform negatives become trivially easy within a
      few epochs on dense data, the hardest of n still teaches;
    - ``softmax``: sampled softmax, cross-entropy of the positive against its
      negatives at `temperature`.
    """
    neg = neg_scores.reshape(len(pos_scores), -1)
    if kind == "bpr":
        return bpr_loss(pos_scores[:, None], neg)
    if kind == "hard":
        hardest = neg.gather(1, neg.detach().argmax(1, keepdim=True)).squeeze(1)
        return bpr_loss(pos_scores, hardest)
    if kind == "softmax":  # cross-entropy with the positive as the target, written out: 2x faster for few columns
        logits = torch.cat([pos_scores[:, None], neg], dim=1) / temperature
        return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
    raise ValueError(f"unknown ranking loss {kind!r}; choose bpr, hard or softmax")


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] for an integer index of any shape, as index_select: its backward is an
    index_add_, about 7x faster on the CPU than the accumulating index_put_ that plain
    indexing's backward runs (measured on MAGNET's batch gathers; bench/training.py)."""
    return x.index_select(0, index.reshape(-1)).reshape(*index.shape, *x.shape[1:])


def unique_ids(ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.unique(ids, return_inverse=True) for ids in [0, n), by counting into a
    length-n table instead of sorting: O(n + len(ids)), ~5x faster on a batch's item ids."""
    seen = torch.bincount(ids, minlength=n) > 0
    rank = torch.cumsum(seen, 0) - 1
    return torch.nonzero(seen).squeeze(1), rank[ids]


def pair_scores(e_u: torch.Tensor, e_i: torch.Tensor, user_index: torch.Tensor, item_index: torch.Tensor) -> torch.Tensor:
    """s[b, j] = e_u[user_index[b]] . e_i[item_index[b, j]] for user_index [B], item_index [B, n].

    On the CPU the B x n pairs are one sparse pattern: its forward is a sampled
    matmul and its backward two sparse-dense products, with no [U, I] or [B, n, d]
    intermediate (the score matrix spent three full U x I x d products on the 6% of
    its cells that MAGNET's ml100k batches read). Elsewhere (CUDA), and for patterns
    denser than the matrix: `dense_pair_scores`."""
    # torch's sampled matmul refuses patterns with more entries than the matrix has
    # cells; the score matrix is the cheaper way there anyway.
    if e_u.device.type == "cpu" and 0 < item_index.numel() <= e_u.shape[0] * e_i.shape[0]:
        return _SampledScores.apply(e_u, e_i, user_index, item_index)
    return dense_pair_scores(e_u, e_i, user_index, item_index)


def dense_pair_scores(
    e_u: torch.Tensor, e_i: torch.Tensor, user_index: torch.Tensor, item_index: torch.Tensor
) -> torch.Tensor:
    """`pair_scores` from dense products: one score matrix picked from, or per-row."""
    n_items, dim = e_i.shape
    if e_u.shape[0] * n_items <= item_index.numel() * dim:
        flat = (user_index.reshape(-1, 1) * n_items + item_index).reshape(-1)
        return (e_u @ e_i.T).reshape(-1).index_select(0, flat).reshape(item_index.shape)
    return (take_rows(e_i, item_index) * take_rows(e_u, user_index).unsqueeze(1)).sum(-1)


def _grouped_csr(
    keys: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n_rows: int, n_cols: int, width: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR [n_rows, n_cols] of the row groups keys[k] -> (cols[k], values[k]), each
    group `width` entries wide, and the stable order that groups them. Duplicate
    columns stay separate entries: the sparse products add them up."""
    order = torch.argsort(keys.to(torch.int32), stable=True)  # int32 keys sort faster; the order is int64
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=keys.device)
    crow[1:] = torch.cumsum(torch.bincount(keys, minlength=n_rows) * width, 0)
    return csr(crow, take_rows(cols, order).reshape(-1), take_rows(values, order).reshape(-1), (n_rows, n_cols)), order


class _SampledScores(torch.autograd.Function):
    """pair_scores as a sampled dense-dense matmul over the batch's (user, item) pairs."""

    @staticmethod
    def forward(ctx, e_u: torch.Tensor, e_i: torch.Tensor, user_index: torch.Tensor, item_index: torch.Tensor):  # noqa: D102
        rows, width = item_index.shape
        zeros = e_u.new_zeros(rows, width)
        pattern, by_user = _grouped_csr(user_index, item_index, zeros, e_u.shape[0], e_i.shape[0], width)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            sampled = torch.sparse.sampled_addmm(pattern, e_u, e_i.T, beta=0.0).values()
        scores = torch.empty_like(zeros).index_copy_(0, by_user, sampled.reshape(rows, width))
        users = take_rows(user_index, by_user).unsqueeze(1).expand(rows, width).reshape(-1)  # each entry's row
        ctx.save_for_backward(e_u, e_i, pattern.col_indices(), pattern.crow_indices(), users, by_user)
        return scores

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        e_u, e_i, cols, crow, users, by_user = ctx.saved_tensors
        n_u, n_i = e_u.shape[0], e_i.shape[0]
        grad = take_rows(grad.to(e_u.dtype), by_user).reshape(-1)  # [B, n] rows into the pattern's order
        d_u = d_i = None
        if ctx.needs_input_grad[0]:  # d e_u = G @ e_i, G the [U, I] sparse matrix of the grads
            d_u = torch.sparse.mm(csr(crow, cols, grad, (n_u, n_i)), e_i)
        if ctx.needs_input_grad[1]:  # d e_i = G^T @ e_u
            g_t, _ = _grouped_csr(cols, users, grad, n_i, n_u)
            d_i = torch.sparse.mm(g_t, e_u)
        return d_u, d_i, None, None


def emb_norm_reg(*rows: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """MMRec's EmbLoss: sum of the batch matrices' Frobenius norms / batch size, for
    batch matrices given as (table, index) = table[index]."""
    return sum(gathered_norm(table, index) for table, index in rows) / rows[-1][1].numel()


def gathered_norm(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """||table[index]||_F without gathering: sqrt(sum_j count_j ||table_j||^2). The
    gather and its scatter-back cost ~8x more than the table's squared row norms."""
    counts = torch.bincount(index.reshape(-1), minlength=table.shape[0]).to(table.dtype)
    return (counts * table.pow(2).sum(1)).sum().clamp_min(1e-30).sqrt()
