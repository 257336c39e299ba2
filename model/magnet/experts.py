"""Fusion level of MAGNET: experts with explicit modality roles, one MLP template.

- dominant(m), one per modality: f([p^m ; c]), modality m leads, anchored on c;
- balanced: f(mean_m p^m + c), every cue with equal say;
- complementary(a, b), one per modality pair: f([p^a * p^b ; p^a - p^b]), what
  two modalities add to each other where they agree or conflict.
With a single modality there is no pair, hence no complementary expert.

Each expert reports what its content adds *given* c: x = f(z(p, c)) - f(z(p_ref, c)),
the same template evaluated once more with every p^m replaced by the average item's
p^m. Measured on the planted world, a plain f([p^m ; c]) learns to copy and amplify
c (every expert then scores like c alone, with about twice c's norm, and the router
has nothing to choose between); the difference keeps c as the anchor that
conditions how the content is read, through the hidden non-linearity, while an item
whose content is average gets nothing from the expert.
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import Tensor, nn

from model.ops import take_rows


class ExpertMLP(nn.Module):
    """The template f(z) = W2 act(W1 z + b1), reported as f(z) - f(z_0).

    z is given in two parts, the content and the anchor (c), with W1 split into the
    matching blocks: concatenation [content ; anchor] uses two blocks, a sum
    content + anchor (`tied`) one shared block, and no anchor none. z_0 has the same
    anchor and the reference content, so the anchor's block is computed once and the
    reference's is a single row. The output layer has no bias (it would cancel).
    """

    def __init__(self, content_dim: int, anchor_dim: int, hidden: int, dim: int, tied: bool = False) -> None:
        super().__init__()
        if tied and anchor_dim != content_dim:
            raise ValueError("a tied (summed) anchor needs the content's width")
        self.content = nn.Linear(content_dim, hidden, bias=False)
        self.anchor = nn.Linear(anchor_dim, hidden, bias=False) if anchor_dim and not tied else None
        self.tied = tied
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.act = nn.GELU()
        self.out = nn.Linear(hidden, dim, bias=False)

    def reset_parameters(self) -> None:
        """The input layers' own initialisation, a zero hidden bias and a zero output
        layer: every expert starts silent (x = 0), so the model starts as its
        collaborative part and each expert grows only as far as the ranking loss
        asks (as zero-initialised residual branches do). With the default init the
        content pathways outweighed the ID embeddings about five to one at the first
        step and overfitted thin users (docs/model.md, "Sparse data")."""
        self.content.reset_parameters()
        if self.anchor is not None:
            self.anchor.reset_parameters()
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.out.weight)

    def forward(self, content: Tensor, content_ref: Tensor, anchor: Tensor | None = None) -> Tensor:
        """f([content ; anchor]) - f([content_ref ; anchor]); content_ref may be one row."""
        base = self.bias
        if anchor is not None:
            base = base + (self.content(anchor) if self.tied else self.anchor(anchor))
        hidden = self.act(base + self.content(content)) - self.act(base + self.content(content_ref))
        return self.out(hidden)


def expert_specs(modalities: list[str]) -> list[dict]:
    """Name, role and modality of each expert, in output order ("a+b" for a pair)."""
    specs = [{"name": f"dominant_{m}", "role": "dominant", "modality": m} for m in modalities]
    specs.append({"name": "balanced", "role": "balanced", "modality": None})
    for a, b in combinations(modalities, 2):
        specs.append({"name": f"complementary_{a}_{b}", "role": "complementary", "modality": f"{a}+{b}"})
    return specs


class ModalityExperts(nn.Module):
    """All experts of one model; forward gives x [B, E, d] for rows of c and p^m:
    dominant(m) = f([p^m ; c]), balanced = f(mean_m p^m + c), complementary(a, b) =
    f([p^a * p^b ; p^a - p^b]), each minus f at the reference content."""

    def __init__(self, modalities: list[str], dim: int, hidden: int) -> None:
        super().__init__()
        self.modalities = sorted(modalities)
        self.specs = expert_specs(self.modalities)
        self.pairs = list(combinations(range(len(self.modalities)), 2))
        self.dominant = nn.ModuleList(ExpertMLP(dim, dim, hidden, dim) for _ in self.modalities)
        self.balanced = ExpertMLP(dim, dim, hidden, dim, tied=True)
        self.complementary = nn.ModuleList(ExpertMLP(2 * dim, 0, hidden, dim) for _ in self.pairs)

    @property
    def n_experts(self) -> int:
        return len(self.specs)

    def reset_parameters(self) -> None:
        """Every expert's template, in output order."""
        for template in self._templates():
            template.reset_parameters()

    def forward(self, c: Tensor, p: list[Tensor], p_ref: list[Tensor]) -> Tensor:
        """x [B, E, d] for rows c [B, d], p^m [B, d]; p_ref^m [d] is the reference content."""
        return torch.stack([f(*self._inputs(e, c, p, p_ref)) for e, f in enumerate(self._templates())], dim=1)

    def combine(self, c: Tensor, p: list[Tensor], p_ref: list[Tensor], gates: Tensor) -> Tensor:
        """sum_e g_e x_e [B, d], running each expert only on the rows that route to it.

        Equal to (gates[..., None] * forward(c, p, p_ref)).sum(1) for sparse gates, in
        about k/E of the work: with top-k routing an unselected expert's output is
        multiplied by an exact zero and gets no gradient, so training skips it (the
        standard sparse mixture-of-experts dispatch; export keeps every expert for the
        explanations)."""
        out = torch.zeros_like(c)
        for e, (f, used) in enumerate(zip(self._templates(), self._uses())):
            rows = torch.nonzero(gates[:, e]).squeeze(1)
            if rows.numel() == 0:
                continue
            p_rows = [take_rows(pm, rows) if m in used else pm for m, pm in enumerate(p)]  # only what e reads
            x = f(*self._inputs(e, take_rows(c, rows), p_rows, p_ref))
            out = out.index_add(0, rows, take_rows(gates[:, e], rows).unsqueeze(1) * x)
        return out

    def _uses(self) -> list[set[int]]:
        """The modalities each expert reads, in output order."""
        every = set(range(len(self.modalities)))
        return [{m} for m in range(len(self.modalities))] + [every] + [set(pair) for pair in self.pairs]

    def _templates(self) -> list[ExpertMLP]:
        """The expert MLPs in output order (dominant per modality, balanced, pairs)."""
        return [*self.dominant, self.balanced, *self.complementary]

    def _inputs(self, e: int, c: Tensor, p: list[Tensor], p_ref: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """(content, reference content [1, .], anchor) of expert e for rows c, p^m."""
        ref = [r.reshape(1, -1) for r in p_ref]
        n_mod = len(self.modalities)
        if e < n_mod:
            return p[e], ref[e], c
        if e == n_mod:
            return torch.stack(p).mean(0), torch.stack(ref).mean(0), c
        a, b = self.pairs[e - n_mod - 1]
        return self._pair(p[a], p[b]), self._pair(ref[a], ref[b]), None

    @staticmethod
    def _pair(pa: Tensor, pb: Tensor) -> Tensor:
        return torch.cat([pa * pb, pa - pb], dim=1)
