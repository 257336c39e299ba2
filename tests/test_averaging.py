"""The trainer's weight average (offline/averaging.py, offline/train.Trainer):
evaluation and export read the exponential moving average of the weights, training
keeps the raw ones, and the decay follows the warm-up rule."""

from __future__ import annotations

import pytest
import torch

from model import build
from offline.config import load_config
from offline.synthetic import SyntheticSpec, generate
from offline.train import Trainer, fit, split_metrics

DS = generate(SyntheticSpec(n_users=60, n_items=80, dims={"text": 6, "image": 5}, seed=2)).dataset


def _trainer(ema_decay: float = 0.99, **overrides) -> Trainer:
    cfg = load_config(None, [f"magnet.{k}={v}" for k, v in {"dim": 8, "expert_hidden": 8, "knn_k": 4,
                                                             "ema_decay": ema_decay, **overrides}.items()],
                      model="magnet", progress=False, epochs=2)
    torch.manual_seed(0)
    model = build("magnet", DS.n_users, DS.n_items, DS.train, DS.features, cfg.model_section())
    return Trainer(model, DS, cfg, torch.device("cpu"))


def _steps(trainer: Trainer, n: int) -> list[dict[str, torch.Tensor]]:
    """n optimizer steps; the raw weights after each."""
    gen = torch.Generator().manual_seed(1)
    after = []
    for _ in range(n):
        users = torch.randint(0, DS.n_users, (32,), generator=gen)
        pos = torch.randint(0, DS.n_items, (32,), generator=gen)
        neg = torch.randint(0, DS.n_items, (32, trainer.model.n_negatives), generator=gen)
        trainer.model.train()
        trainer.step(users, pos, neg)
        after.append({k: v.detach().clone() for k, v in trainer.model.named_parameters()})
    return after


def test_serving_uses_the_weight_average_and_training_keeps_raw_weights() -> None:
    trainer = _trainer()
    model = trainer.model
    raw_before = {k: v.detach().clone() for k, v in model.named_parameters()}
    history = _steps(trainer, 4)
    assert trainer.average.updates == 4
    raw = history[-1]
    model.eval()  # content dropout off: embeddings() and mix_all() read the same network
    # the average by hand: it starts at the initial weights, d_n = min(0.99, (1 + n) / (3 + n))
    expected = raw_before["item_emb"].clone()
    for n, weights in enumerate(history):
        decay = min(0.99, (1 + n) / (3 + n))
        expected = decay * expected + (1 - decay) * weights["item_emb"]
    with trainer.evaluated_weights():
        averaged = model.item_emb.detach().clone()
        ema_emb = model.embeddings()[1]
        mixed_items = model.mix_all()[1].emb
    assert torch.allclose(averaged, expected, atol=1e-6)
    assert all(torch.equal(v, dict(model.named_parameters())[k]) for k, v in raw.items())  # restored
    # the average lies strictly between the init and the current weights for the item table
    assert not torch.equal(averaged, raw["item_emb"]) and not torch.equal(averaged, raw_before["item_emb"])
    assert torch.allclose(mixed_items, ema_emb)
    assert not torch.allclose(model.embeddings()[1], ema_emb)  # outside the block: the raw weights

    off = _trainer(ema_decay=0.0)  # averaging off: evaluation reads the raw weights
    raw_off = _steps(off, 2)[-1]
    off.model.eval()
    with off.evaluated_weights():
        assert all(torch.equal(v, dict(off.model.named_parameters())[k]) for k, v in raw_off.items())
        assert torch.allclose(off.model.embeddings()[1], off.model.mix_all()[1].emb)


def test_best_state_carries_the_average_so_the_best_epoch_export_is_reproducible() -> None:
    """fit() keeps the evaluated weights (the average) of the best epoch: loaded back,
    they give exactly the valid recall that chose the epoch."""
    trainer = _trainer()
    model, cfg = trainer.model, trainer.cfg
    best_state, history, best_epoch, epochs_run = fit(model, DS, cfg, torch.device("cpu"))
    assert epochs_run == 2 and best_epoch in (1, 2)
    assert not any(".ema" in key or key.startswith("ema") for key in best_state)  # plain weights
    model.load_state_dict(best_state)
    model.eval()
    recall = split_metrics(model.encode(), DS, "valid", cfg, torch.device("cpu"))["recall@20"]
    assert recall == pytest.approx(history.valid_recall[best_epoch - 1], abs=1e-12)


def test_select_metric_picks_the_epoch_with_the_best_sum_of_its_terms() -> None:
    """With select_metric=recall@20+ndcg@50 the best epoch is the first maximum of that
    sum (not of recall@20), and the kept weights give exactly that sum on valid."""
    trainer = _trainer()
    model = trainer.model
    cfg = load_config(None, ["select_metric=recall@20 + ndcg@50", "magnet.dim=8", "magnet.expert_hidden=8",
                             "magnet.knn_k=4"], model="magnet", progress=False, epochs=4)
    best_state, history, best_epoch, _ = fit(model, DS, cfg, torch.device("cpu"))
    assert cfg.ks == [10, 20, 50]  # @50 is evaluated because the selection needs it
    assert best_epoch == history.valid_score.index(max(history.valid_score)) + 1
    model.load_state_dict(best_state)
    model.eval()
    valid = split_metrics(model.encode(), DS, "valid", cfg, torch.device("cpu"))
    assert valid["recall@20"] + valid["ndcg@50"] == pytest.approx(max(history.valid_score), abs=1e-12)
