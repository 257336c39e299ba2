"""Progressive, entropy-triggered routing regularization.

Stage 1 (coverage) maximizes the entropy of the batch-mean routing distribution so
every expert gets used while the representations are still forming. A monitor
watches the epoch-mean normalized coverage entropy; once it has stayed above a
threshold for W consecutive epochs the regularizer switches, once, to stage 2
(specialization): sharp per-sample routing while the batch keeps covering all
experts. Stage 2's loss is ramped in over a few epochs rather than jumped to.
"""

from __future__ import annotations

import math

from torch import Tensor

from model.base import SumOverRanks, local_sums

_EPS = 1e-12


def _entropy(p: Tensor) -> Tensor:
    return -(p * (p + _EPS).log()).sum(-1)


def coverage_entropy(q: Tensor) -> Tensor:
    """H_bar / log E: entropy of the batch-mean routing distribution, in [0, 1]."""
    return _entropy(q.mean(0)) / math.log(q.shape[1]) if q.shape[1] > 1 else q.new_zeros(())


def sample_entropy(q: Tensor) -> Tensor:
    """mean_i H_i / log E: average per-sample routing entropy, in [0, 1]."""
    return _entropy(q).mean() / math.log(q.shape[1]) if q.shape[1] > 1 else q.new_zeros(())


class RoutingMonitor:
    """Per-epoch entropy bookkeeping and the one-way stage-1 -> stage-2 trigger.

    `observe` is fed every training batch's normalized entropies; `end_epoch` closes
    the epoch: the stage switches at the end of the W-th consecutive epoch whose mean
    coverage entropy is strictly above `threshold`. Epoch `e`'s stage is the stage
    its batches trained under; after a switch at the end of epoch s, stage 2 runs
    from epoch s + 1 with ramp weight (epoch - s) / ramp_epochs, capped at 1.
    """

    def __init__(self, threshold: float, window: int, ramp_epochs: int, one_stage: bool = False) -> None:
        self.threshold, self.window, self.ramp_epochs = threshold, window, ramp_epochs
        self.one_stage = one_stage
        self.stage = 2 if one_stage else 1
        self.switch_epoch: int | None = None
        self.streak = 0
        self.epoch = 1  # the epoch now being trained
        self._sums = {"coverage": 0.0, "sample": 0.0}
        self._batches = 0

    def ramp(self) -> float:
        """Weight of stage 2's loss in the current epoch (1 when one_stage)."""
        if self.one_stage:
            return 1.0
        if self.stage == 1 or self.switch_epoch is None:
            return 0.0
        return min(1.0, (self.epoch - self.switch_epoch) / self.ramp_epochs)

    def observe(self, coverage: float, sample: float) -> None:
        self._sums["coverage"] += coverage
        self._sums["sample"] += sample
        self._batches += 1

    def end_epoch(self, epoch: int, sum_over_ranks: SumOverRanks = local_sums) -> dict:
        """Epoch means, the stage this epoch ran under, and the switch epoch so far.
        Under data parallelism the entropy sums and batch counts go through
        `sum_over_ranks` first, so every process sees the same means and takes the
        same stage decision."""
        cov_sum, smp_sum, n_batches = sum_over_ranks([self._sums["coverage"], self._sums["sample"], self._batches])
        batches = int(round(n_batches))
        n = max(batches, 1)
        coverage, sample = cov_sum / n, smp_sum / n
        ran_under = self.stage
        if self.stage == 1:
            self.streak = self.streak + 1 if (batches and coverage > self.threshold) else 0
            if self.streak >= self.window:
                self.stage, self.switch_epoch = 2, epoch
        self.epoch = epoch + 1
        self._sums = {"coverage": 0.0, "sample": 0.0}
        self._batches = 0
        return {
            "stage": ran_under,
            "coverage_entropy": coverage,
            "sample_entropy": sample,
            "stage_switch_epoch": self.switch_epoch,
        }


class RoutingRegularizer:
    """L_route for the monitor's current stage: 1 - H_bar in stage 1, mean H_i +
    lambda_cov * (1 - H_bar) in stage 2, blended by the ramp while it comes in.

    The design writes -H_bar and H_i - lambda_cov * H_bar; the constants added here
    change no gradient but keep the loss non-negative (normalized entropies lie in
    [0, 1]), so a training loss below zero no longer reads as a bug."""

    def __init__(self, monitor: RoutingMonitor, lambda_cov: float) -> None:
        self.monitor, self.lambda_cov = monitor, lambda_cov

    def __call__(self, q: Tensor) -> Tensor:
        h_bar, h_i = coverage_entropy(q), sample_entropy(q)
        ramp = self.monitor.ramp()
        stage1 = 1.0 - h_bar
        stage2 = h_i + self.lambda_cov * (1.0 - h_bar)
        return (1.0 - ramp) * stage1 + ramp * stage2
