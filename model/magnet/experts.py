"""Fusion level of MAGNET: experts with explicit modality roles, one MLP template.

- dominant(m), one per modality: f([p^m ; c]), modality m leads, anchored on c;
- balanced: f(mean_m p^m + c), every cue with equal say;
- complementary(a, b), one per modality pair: f([p^a * p^b ; p^a - p^b]), what
  two modalities add to each other where they agree or conflict.
With a single modality there is no pair, hence no complementary expert.
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import Tensor, nn


class ExpertMLP(nn.Module):
    """The template f: in -> hidden -> d."""

    def __init__(self, in_dim: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def expert_specs(modalities: list[str]) -> list[dict]:
    """Name, role and modality of each expert, in output order ("a+b" for a pair)."""
    specs = [{"name": f"dominant_{m}", "role": "dominant", "modality": m} for m in modalities]
    specs.append({"name": "balanced", "role": "balanced", "modality": None})
    for a, b in combinations(modalities, 2):
        specs.append({"name": f"complementary_{a}_{b}", "role": "complementary", "modality": f"{a}+{b}"})
    return specs


class ModalityExperts(nn.Module):
    """All experts of one model; forward gives x [B, E, d] for rows of c and p^m."""

    def __init__(self, modalities: list[str], dim: int, hidden: int) -> None:
        super().__init__()
        self.modalities = sorted(modalities)
        self.specs = expert_specs(self.modalities)
        self.pairs = list(combinations(range(len(self.modalities)), 2))
        self.dominant = nn.ModuleList(ExpertMLP(2 * dim, hidden, dim) for _ in self.modalities)
        self.balanced = ExpertMLP(dim, hidden, dim)
        self.complementary = nn.ModuleList(ExpertMLP(2 * dim, hidden, dim) for _ in self.pairs)

    @property
    def n_experts(self) -> int:
        return len(self.specs)

    def forward(self, c: Tensor, p: list[Tensor]) -> Tensor:
        out = [f(torch.cat([pm, c], dim=1)) for f, pm in zip(self.dominant, p)]
        out.append(self.balanced(torch.stack(p).mean(0) + c))
        for f, (a, b) in zip(self.complementary, self.pairs):
            out.append(f(torch.cat([p[a] * p[b], p[a] - p[b]], dim=1)))
        return torch.stack(out, dim=1)
