"""The training losses the models share: ranking losses over sampled negatives and
MMRec's embedding-norm regularizer."""

from __future__ import annotations

import torch
from torch import Tensor

from model.ops import gathered_norm


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """-log sigmoid(s_pos - s_neg), averaged; the softplus form is the stable one."""
    return torch.nn.functional.softplus(neg_scores - pos_scores).mean()


def ranking_loss(pos_scores: Tensor, neg_scores: Tensor, kind: str = "bpr", temperature: float = 1.0) -> Tensor:
    """The loss of one positive [B] against n sampled negatives [B] or [B, n].

    - ``bpr``: BPR averaged over the negatives;
    - ``hard``: BPR on the highest-scoring negative of each row (dynamic negative
      sampling, Zhang et al. 2013): uniform negatives become trivially easy within a
      few epochs on dense data, the hardest of n still teaches;
    - ``softmax``: sampled softmax, cross-entropy of the positive against its
      negatives at `temperature`, written as logsumexp - positive logit (equal to
      ``F.cross_entropy`` with target 0, cheaper for a few columns).
    """
    neg = neg_scores.reshape(len(pos_scores), -1)
    if kind == "bpr":
        return bpr_loss(pos_scores[:, None], neg)
    if kind == "hard":
        hardest = neg.gather(1, neg.detach().argmax(1, keepdim=True)).squeeze(1)
        return bpr_loss(pos_scores, hardest)
    if kind == "softmax":
        logits = torch.cat([pos_scores[:, None], neg], dim=1) / temperature
        return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
    raise ValueError(f"unknown ranking loss {kind!r}; choose bpr, hard or softmax")


def emb_norm_reg(*rows: tuple[Tensor, Tensor]) -> Tensor:
    """MMRec's EmbLoss: the sum of the batch matrices' Frobenius norms / batch size,
    for batch matrices given as (table, index) = table[index]."""
    return sum(gathered_norm(table, index) for table, index in rows) / rows[-1][1].numel()
