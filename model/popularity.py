"""Most-popular baseline, written as a dot-product model so serving needs no special case."""

from __future__ import annotations

import numpy as np
import torch


class Popularity(torch.nn.Module):
    """s(u, i) = [1] . [count_i / max count]: every user gets the same ranking.

    Nothing is learned; the trainer skips its epoch loop. It exposes the same
    `embeddings()` / `export_arrays()` as the trainable models (with zero experts).
    """

    experts: list[dict] = []

    def __init__(self, n_users: int, n_items: int, train_edges: np.ndarray) -> None:
        super().__init__()
        counts = np.bincount(train_edges[:, 1], minlength=n_items).astype(np.float32)
        scale = counts.max() if counts.size and counts.max() > 0 else 1.0
        self.register_buffer("item_score", torch.as_tensor(counts / scale).unsqueeze(1))
        self.register_buffer("user_one", torch.ones(n_users, 1))

    def epoch_end(self, epoch: int) -> dict:
        return {}

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_one, self.item_score

    @torch.no_grad()
    def export_arrays(self) -> dict[str, np.ndarray]:
        items = self.item_score.cpu().numpy()
        n = items.shape[0]
        return {
            "user_emb": self.user_one.cpu().numpy(),
            "item_emb": items,
            "item_base": items,
            "item_gates": np.zeros((n, 0), dtype=np.float32),
            "item_experts": np.zeros((n, 0, 1), dtype=np.float32),
        }
