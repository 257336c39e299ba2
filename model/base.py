"""The interface every model implements, so one trainer, evaluator and exporter
serve them all (see docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

#: sums a list of per-process values over the data-parallel processes (the trainer
#: passes one in; a single process is its own sum)
SumOverRanks = Callable[[list[float]], list[float]]


def local_sums(values: list[float]) -> list[float]:
    """`SumOverRanks` of a single process: the values themselves."""
    return values


# The settings the trainer reads from a trainable model's config section. Every model
# declares all four with its own default (no hidden fallbacks); TrainConfig's top-level
# batch_size and lr override them when given.
BatchSize = Annotated[int, Field(ge=1, description="training rows per step")]
MinStepsPerEpoch = Annotated[int, Field(
    ge=1, description="on small data the default batch shrinks so an epoch still has this many steps")]
LearningRate = Annotated[float, Field(gt=0, description="Adam learning rate")]
EmaDecay = Annotated[float, Field(
    ge=0, lt=1, description="evaluation, early stopping and export use an exponential moving average of the "
    "weights (per training step, warmed up; offline/averaging.py); 0 uses the raw weights")]


@runtime_checkable
class TrainingDefaults(Protocol):
    """A trainable model's config section, as the trainer sees it."""

    batch_size: int
    min_steps_per_epoch: int
    lr: float
    ema_decay: float


@dataclass
class Encoding:
    """What a model serves: the final embeddings and each item's split into a base and
    expert contributions, e_i = base_i + sum_e g_ie x_ie (a model without experts has
    base = e and E = 0). Scores are s(u, i) = e_u . e_i."""

    user_emb: Tensor  # e_u [U, d]
    item_emb: Tensor  # e_i [I, d]
    item_base: Tensor  # base_i [I, d]
    item_gates: Tensor  # g_ie [I, E]
    item_experts: Tensor  # x_ie [I, E, d]

    @classmethod
    def without_experts(cls, users: Tensor, items: Tensor) -> Encoding:
        """e_i = base_i, no experts."""
        n, d = items.shape
        return cls(users, items, items, items.new_zeros(n, 0), items.new_zeros(n, 0, d))

    def arrays(self) -> dict[str, np.ndarray]:
        """float32 numpy copies, named as RUN/arrays/ and the bundle name them."""
        return {name: getattr(self, name).detach().float().cpu().numpy()
                for name in ("user_emb", "item_emb", "item_base", "item_gates", "item_experts")}

    def expert_utilization(self) -> list[float] | None:
        """Share of items whose top-1 expert is each expert (None without experts)."""
        n_items, n_experts = self.item_gates.shape
        if n_experts == 0:
            return None
        counts = torch.bincount(self.item_gates.argmax(1), minlength=n_experts).float()
        return [float(v) for v in (counts / max(n_items, 1)).cpu()]


class Recommender(torch.nn.Module):
    """A dot-product recommender: s(u, i) = e_u . e_i.

    Subclasses implement `encode` (what serving and evaluation need) and, when they
    have parameters to learn, `loss` (one training step's loss: the model's ranking
    loss over the sampled negatives plus its regularizers). A model without
    parameters is not trained (the trainer runs no epochs).
    """

    experts: list[dict] = []
    n_negatives: int = 1  # negatives the trainer draws per positive; neg is [B] when 1, else [B, n]

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError(f"{type(self).__name__} learns nothing")

    def forward(self, users: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, dict[str, float]]:  # noqa: D102
        return self.loss(users, pos, neg)

    @torch.no_grad()
    def encode(self) -> Encoding:
        """Every user's and item's final embedding and the items' expert split."""
        raise NotImplementedError

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """(e_u for every user, e_i for every item)."""
        encoding = self.encode()
        return encoding.user_emb, encoding.item_emb

    def export_arrays(self) -> dict[str, np.ndarray]:
        """`encode()` as float32 arrays (what RUN/arrays/ holds)."""
        return self.encode().arrays()

    def epoch_end(self, epoch: int, sum_over_ranks: SumOverRanks = local_sums) -> dict:
        """Called once per epoch after its training steps; returns values to log.
        Values that must agree across data-parallel processes go through
        `sum_over_ranks`."""
        return {}
