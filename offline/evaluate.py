"""Full-ranking evaluation with MMRec's protocol.

Every user with relevant items in the evaluated split gets every item scored; the
user's training items are masked (validation items are *not* masked at test time),
and Recall/NDCG/Precision/MAP are averaged over those users. Computed in batches
on torch so a GPU is used when the embeddings live on one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps a batch of internal user ids to a [batch, n_items] score matrix."""

METRICS = ("recall", "ndcg", "precision", "map")


def metric_names(ks: Sequence[int]) -> list[str]:
    """The keys evaluate() returns, in a stable order."""
    return [f"{m}@{k}" for m in METRICS for k in ks]


def relevance_matrix(
    pairs: np.ndarray, n_users: int, n_items: int, item_mask: np.ndarray | None = None
) -> sp.csr_matrix:
    """Sparse user x item relevance from (user, item) pairs, optionally keeping only
    items where ``item_mask`` is true (used for long-tail evaluation)."""
    if item_mask is not None:
        pairs = pairs[item_mask[pairs[:, 1]]]
    data = np.ones(len(pairs), dtype=np.float32)
    mat = sp.csr_matrix((data, (pairs[:, 0], pairs[:, 1])), shape=(n_users, n_items))
    mat.data[:] = 1.0  # duplicates collapse to a single relevant item
    return mat


def _rank_metrics(hits: torch.Tensor, n_rel: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per-user metric sums from a [batch, max_k] 0/1 hit matrix of ranked items."""
    max_k = hits.shape[1]
    positions = torch.arange(1, max_k + 1, device=hits.device, dtype=torch.float32)
    discounts = 1.0 / torch.log2(positions + 1.0)
    cum_hits = hits.cumsum(dim=1)
    precision_at = cum_hits / positions
    ap_terms = (precision_at * hits).cumsum(dim=1)
    ideal = discounts.cumsum(dim=0)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        denom = torch.clamp(n_rel, max=k)
        out[f"recall@{k}"] = cum_hits[:, k - 1] / n_rel
        dcg = (hits[:, :k] * discounts[:k]).sum(dim=1)
        out[f"ndcg@{k}"] = dcg / ideal[(denom - 1).long()]
        out[f"precision@{k}"] = cum_hits[:, k - 1] / k
        out[f"map@{k}"] = ap_terms[:, k - 1] / denom
    return out


@torch.no_grad()
def evaluate(
    score_fn: ScoreFn,
    train: sp.csr_matrix,
    relevant: sp.csr_matrix,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Average full-ranking metrics over users that have relevant items.

    ``train`` holds the items masked from each user's ranking; ``relevant`` the
    held-out items. Returns ``{"recall@10": ..., "ndcg@20": ..., ...}`` and
    ``"n_users"``, the number of users averaged over.
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    n_items = train.shape[1]
    max_k = min(max(ks), n_items)
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    totals = {name: 0.0 for name in metric_names(ks)}
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = score_fn(torch.as_tensor(batch, device=device)).float()
        seen = train[batch].tocoo()
        scores[torch.as_tensor(seen.row, device=device), torch.as_tensor(seen.col, device=device)] = -torch.inf
        top = torch.topk(scores, k=max_k, dim=1).indices
        rel = relevant[batch].tocoo()
        rel_dense = torch.zeros_like(scores)
        rel_dense[torch.as_tensor(rel.row, device=device), torch.as_tensor(rel.col, device=device)] = 1.0
        hits = rel_dense.gather(1, top)
        if max_k < max(ks):  # tiny catalogues: pad so every k indexes
            hits = torch.nn.functional.pad(hits, (0, max(ks) - max_k))
        n_rel = torch.as_tensor(np.diff(relevant.indptr)[batch], dtype=torch.float32, device=device)
        for name, values in _rank_metrics(hits, n_rel, ks).items():
            totals[name] += float(values.sum())
    n = max(len(users), 1)
    result = {name: total / n for name, total in totals.items()}
    result["n_users"] = int(len(users))
    return result


def embedding_scorer(user_emb: torch.Tensor, item_emb: torch.Tensor) -> ScoreFn:
    """Score function for dot-product models: s(u, i) = e_u . e_i."""
    item_t = item_emb.t()

    def score(users: torch.Tensor) -> torch.Tensor:
        return user_emb[users.to(user_emb.device)] @ item_t

    return score
