"""Training curves as a PNG: loss, valid Recall@20, routing entropies, expert use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from offline.train import History


def plot_curves(history: "History", routing: dict[str, Any] | None, out: Path, title: str = "") -> None:
    """Writes `out` (PNG). Routing panels appear only for models with experts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_panels = 4 if routing else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.4))
    epochs = history.epochs
    axes[0].plot(epochs, history.loss, color="tab:blue")
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].plot(epochs, history.valid_recall, color="tab:green")
    axes[1].set(title="valid Recall@20", xlabel="epoch")
    if routing:
        switch = routing.get("stage_switch_epoch")
        ax = axes[2]
        ax.plot(epochs, routing["coverage_entropy"], label="coverage H (norm.)")
        ax.plot(epochs, routing["sample_entropy"], label="per-item H (norm.)")
        ax.set(title="routing entropy", xlabel="epoch", ylim=(0, 1.05))
        ax = axes[3]
        util = routing.get("utilization_per_epoch") or []
        if util:
            n_experts = len(util[0])
            for e in range(n_experts):
                ax.plot(epochs, [u[e] for u in util], label=f"expert {e}")
        ax.set(title="expert utilization (top-1 share)", xlabel="epoch", ylim=(0, 1.05))
        for ax in axes[2:]:
            if switch:
                ax.axvline(switch, color="red", linestyle="--", label="stage switch")
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
