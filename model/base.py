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
