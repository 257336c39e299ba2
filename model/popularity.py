"""Most-popular baseline, written as a dot-product model so serving needs no special case."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from model.base import Encoding, Recommender


class PopularityConfig(BaseModel):
    """Nothing to set: the ranking is the training counts."""

    model_config = ConfigDict(extra="forbid")


class Popularity(Recommender):
    """s(u, i) = [1] . [count_i / max count]: every user gets the same ranking.

    Nothing is learned (no parameters, so the trainer runs no epochs); it encodes
    like the trainable models, with zero experts.
    """

    def __init__(self, n_users: int, n_items: int, train_edges: np.ndarray, cfg: PopularityConfig | None = None) -> None:
        super().__init__()
        counts = np.bincount(train_edges[:, 1], minlength=n_items).astype(np.float32)
        scale = counts.max() if counts.size and counts.max() > 0 else 1.0
        self.register_buffer("item_score", torch.as_tensor(counts / scale).unsqueeze(1))
        self.register_buffer("user_one", torch.ones(n_users, 1))

    @torch.no_grad()
    def encode(self) -> Encoding:
        return Encoding.without_experts(self.user_one, self.item_score)
