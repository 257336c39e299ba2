"""LightGCN (He et al., SIGIR 2020): ID embeddings propagated over the normalized
user-item graph, final embedding = mean over layers (layer 0 included)."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from model.base import BatchSize, EmaDecay, Encoding, LearningRate, MinStepsPerEpoch, Recommender
from model.graph import layer_mean, normalized_bipartite
from model.losses import bpr_loss, emb_norm_reg
from model.ops import spmm, take_rows


class LightGCNConfig(BaseModel):
    """Defaults beat MMRec's one-layer grid point on ml100k (see docs/benchmarks.md)."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(64, ge=1)
    n_layers: int = Field(2, ge=0)
    reg_weight: float = Field(1e-2, ge=0, description="MMRec EmbLoss weight on the batch's layer-0 embeddings")
    batch_size: BatchSize = 2048  # MMRec's
    min_steps_per_epoch: MinStepsPerEpoch = 1
    lr: LearningRate = 1e-3
    ema_decay: EmaDecay = 0.0


class LightGCN(Recommender):
    experts: list[dict] = []

    def __init__(self, n_users: int, n_items: int, train_edges: np.ndarray, cfg: LightGCNConfig) -> None:
        super().__init__()
        self.n_users, self.n_items, self.cfg = n_users, n_items, cfg
        self.user_emb = torch.nn.Parameter(torch.empty(n_users, cfg.dim))
        self.item_emb = torch.nn.Parameter(torch.empty(n_items, cfg.dim))
        self.register_buffer("adj", normalized_bipartite(train_edges, n_users, n_items), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ID embeddings drawn as MMRec/LightGCN draw them (xavier uniform)."""
        torch.nn.init.xavier_uniform_(self.user_emb)
        torch.nn.init.xavier_uniform_(self.item_emb)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-mean LightGCN embeddings of all users and items (adj is symmetric)."""
        out = layer_mean(torch.cat([self.user_emb, self.item_emb]), lambda z: spmm(self.adj, z), self.cfg.n_layers)
        return out[: self.n_users], out[self.n_users :]

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        u_all, i_all = self.propagate()
        u, p, n = take_rows(u_all, users), take_rows(i_all, pos), take_rows(i_all, neg)
        bpr = bpr_loss((u * p).sum(1), (u * n).sum(1))
        reg = emb_norm_reg((self.user_emb, users), (self.item_emb, pos), (self.item_emb, neg))
        return bpr + self.cfg.reg_weight * reg, {"bpr": float(bpr.detach())}

    @torch.no_grad()
    def encode(self) -> Encoding:
        return Encoding.without_experts(*self.propagate())
