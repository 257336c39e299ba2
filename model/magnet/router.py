"""Interaction-conditioned routing: the collaborative representation c, not the
content, decides which modality role to trust."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Kept logits lie within this of the best one, so exp() never underflows and
# exactly k weights stay non-zero (e^-30 ~ 1e-13, far above float32's minimum).
_MAX_GAP = 30.0


class TopKRouter(nn.Module):
    """logits = W_r c / T (+ Gaussian noise in training); g = softmax over the top-k
    logits, zero elsewhere; q = the dense softmax the regularizer looks at."""

    def __init__(self, dim: int, n_experts: int, top_k: int, temperature: float, noise_std: float) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, n_experts, bias=False)
        self.top_k = min(top_k, n_experts)
        self.temperature = temperature
        self.noise_std = noise_std

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()

    def forward(self, c: Tensor, noise: bool | None = None) -> tuple[Tensor, Tensor]:
        """Returns (g [B, E] sparse weights, q [B, E] dense softmax)."""
        noise = self.training if noise is None else noise
        logits = self.proj(c) / self.temperature
        if noise and self.noise_std > 0:
            logits = logits + self.noise_std * torch.randn_like(logits)
        q = torch.softmax(logits, dim=1)
        top, idx = logits.topk(self.top_k, dim=1)
        top = torch.maximum(top, top[:, :1] - _MAX_GAP)
        g = torch.zeros_like(logits).scatter(1, idx, torch.softmax(top, dim=1))
        return g, q
