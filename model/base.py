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
    if kind == "softmax":
        logits = torch.cat([pos_scores[:, None], neg], dim=1) / temperature
        return torch.nn.functional.cross_entropy(logits, logits.new_zeros(len(logits), dtype=torch.long))
    raise ValueError(f"unknown ranking loss {kind!r}; choose bpr, hard or softmax")


def emb_norm_reg(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec's EmbLoss: sum of the batch matrices' Frobenius norms / batch size."""
    total = sum(torch.linalg.norm(e) for e in embeddings)
    return total / embeddings[-1].shape[0]
