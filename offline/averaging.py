"""Weight averaging for training: an exponential moving average of the parameters,
used for evaluation, early stopping and export.

Single-epoch weights of a model with content MLPs swing valid Recall@20 from epoch
to epoch (docs/model.md); their running average is smooth. The average is the
trainer's business, not the model's: the trainer folds the weights in after each
optimizer step and swaps the average in whenever it evaluates or keeps a state.

Why not ``torch.optim.swa_utils.AveragedModel``: it deep-copies the whole module,
buffers included, and MAGNET's buffers are its graphs (the bulk of its memory at
10^6 interactions); its first update copies the weights where this average starts
from the initial weights with a warm-up. Here only the parameters are copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


WARMUP = 3.0


class WeightAverage:
    """avg <- d avg + (1 - d) w after each optimizer step, with the decay warmed up as
    d = min(decay, (1 + n) / (WARMUP + n)) for the n-th update, so the early epochs are
    not dominated by the initial weights (which are where the average starts). The
    warm-up reaches d = 0.9 after 18 updates (WARMUP = 3; it was 10 and 81 updates:
    the average then trailed the weights for most of a run on small data).

    A decay of 0 turns averaging off: `update` does nothing and `swapped_in` leaves
    the raw weights in place.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"weight-average decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.params = [p for p in model.parameters()] if decay > 0 else []
        self.average = [p.detach().clone() for p in self.params]
        self.updates = 0

    @property
    def enabled(self) -> bool:
        return bool(self.params)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return min(self.decay, (1 + self.updates) / (WARMUP + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Folds the current weights into the average (call after each optimizer step)."""
        if not self.params:
            return
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], weight)
        self.updates += 1

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the model for the block, the raw ones restored after."""
        if not self.params:
            yield
            return
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, raw)
