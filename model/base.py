"""The interface every trainable model implements, so one trainer, evaluator and
exporter serve them all (see docs/architecture.md)."""

from __future__ import annotations

import numpy as np
import torch


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
    """s[b, j] = e_u[user_index[b]] . e_i[item_index[b, j]].

    When the rows are few enough that every user x item score takes no more memory
    than gathering the item rows would ([U, I] <= [B, n, d]; a batch's distinct rows on
    small catalogues), it computes that score matrix with one matmul and picks scalars
    from it: forward and backward are ~4x faster than per-row products."""
    n_items, dim = e_i.shape
    if e_u.shape[0] * n_items <= item_index.numel() * dim:
        flat = (user_index.reshape(-1, 1) * n_items + item_index).reshape(-1)
        return (e_u @ e_i.T).reshape(-1).index_select(0, flat).reshape(item_index.shape)
    return (take_rows(e_i, item_index) * take_rows(e_u, user_index).unsqueeze(1)).sum(-1)


def emb_norm_reg(*rows: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """MMRec's EmbLoss: sum of the batch matrices' Frobenius norms / batch size, for
    batch matrices given as (table, index) = table[index]."""
    return sum(gathered_norm(table, index) for table, index in rows) / rows[-1][1].numel()


def gathered_norm(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """||table[index]||_F without gathering: sqrt(sum_j count_j ||table_j||^2). The
    gather and its scatter-back cost ~8x more than the table's squared row norms."""
    counts = torch.bincount(index.reshape(-1), minlength=table.shape[0]).to(table.dtype)
    return (counts * table.pow(2).sum(1)).sum().clamp_min(1e-30).sqrt()
