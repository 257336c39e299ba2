"""The trainer behind `magnet train`: a ranking loss over uniform negatives (each
model's own: sampled softmax for MAGNET, BPR for LightGCN), full-ranking validation
every epoch on the weight average, early stopping on a valid metric
(`select_metric`, Recall@20 by default), and a run directory that `magnet evaluate`
and `magnet export` read.

The run is written into a hidden sibling directory and published only when it is
complete (`offline.publish`), so an interrupted run never looks finished.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from model import build as build_model
from model.base import Encoding, Recommender
from offline.averaging import WeightAverage
from offline.config import TrainConfig, dump_config
from offline.dataset import Dataset, load_dataset
from offline.distributed import DistInfo, data_parallel, decided_by_main, dist_info, sum_over_ranks
from offline.evaluate import embedding_scorer, evaluate, relevance_matrix
from offline.publish import staged
from service.item_files import ItemFileError, read_item_files, write_item_files

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """A run that cannot start or finish; the message says why."""


# --------------------------------------------------------------------------- setup


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Same seed, same data, same metrics on the CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new uninitialized tensor with NaN, a debugging
    # aid that changes no result of code that writes before it reads, and costs hundreds
    # of fills a MAGNET step.
    torch.utils.deterministic.fill_uninitialized_memory = False


class NegativeSampler:
    """Uniform negatives that are not in the user's training items."""

    # Below this many (user, item) cells membership is a dense boolean lookup (<= 64 MB),
    # much faster than a binary search over the sorted training keys.
    DENSE_CELLS = 1 << 26

    def __init__(self, train: np.ndarray, n_items: int, seed: int) -> None:
        self.n_items = n_items
        users, items = train[:, 0].astype(np.int64), train[:, 1].astype(np.int64)
        self.known = np.unique(users * n_items + items)
        n_users = int(users.max()) + 1 if len(users) else 0
        self.dense: np.ndarray | None = None
        if n_users * n_items <= self.DENSE_CELLS:
            self.dense = np.zeros((n_users, n_items), dtype=bool)
            self.dense[users, items] = True
        self.rng = np.random.default_rng(seed)

    def _seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if self.dense is not None:  # flat indexing: faster than the 2-D fancy index
            return self.dense.reshape(-1)[users * self.n_items + items]
        keys = users.astype(np.int64) * self.n_items + items
        pos = np.searchsorted(self.known, keys)
        pos = np.minimum(pos, len(self.known) - 1)
        return self.known[pos] == keys

    def sample(self, users: np.ndarray, n: int = 1) -> np.ndarray:
        """One negative per user row ([N]), or n of them ([N, n]) when n > 1."""
        if n > 1:
            return self.sample(np.repeat(users, n)).reshape(len(users), n)
        users = np.asarray(users)
        items = self.rng.integers(0, self.n_items, size=len(users))
        bad = np.flatnonzero(self._seen(users, items))
        for _ in range(100):  # a user who saw nearly every item just keeps the last draw
            if len(bad) == 0:
                break
            items[bad] = self.rng.integers(0, self.n_items, size=len(bad))
            bad = bad[self._seen(users[bad], items[bad])]  # only redrawn rows can still be seen
        return items


@dataclass
class History:
    """Per-epoch logs; plotted into curves.png and summarised in metrics.json."""

    epochs: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    valid_recall: list[float] = field(default_factory=list)
    valid_score: list[float] = field(default_factory=list)  # the selection metric (`select_metric`)
    routing: list[dict[str, Any]] = field(default_factory=list)

    def routing_block(self, final_utilization: list[float] | None) -> dict[str, Any] | None:
        """The contract's metrics.json `routing` block (None for expert-less models)."""
        if not self.routing or "coverage_entropy" not in self.routing[-1]:
            return None
        return {
            "stage_switch_epoch": self.routing[-1].get("stage_switch_epoch"),
            "expert_utilization": final_utilization or self.routing[-1].get("expert_utilization"),
            "epochs": list(self.epochs),  # the epoch each entry below was measured at
            "coverage_entropy": [float(r["coverage_entropy"]) for r in self.routing],
            "sample_entropy": [float(r["sample_entropy"]) for r in self.routing],
            "stage": [int(r.get("stage", 0)) for r in self.routing],
            "utilization_per_epoch": [list(map(float, r["expert_utilization"])) for r in self.routing],
        }


# ------------------------------------------------------------------ evaluation


def split_metrics(
    encoding: Encoding,
    ds: Dataset,
    split: str,
    cfg: TrainConfig,
    device: torch.device,
    item_mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of an encoding's embeddings on one split."""
    pairs = getattr(ds, split)
    relevant = relevance_matrix(pairs, ds.n_users, ds.n_items, item_mask=item_mask)
    return evaluate(
        embedding_scorer(encoding.user_emb.to(device).float(), encoding.item_emb.to(device).float()),
        ds.train_matrix(),
        relevant,
        ks=cfg.ks,
        batch_size=cfg.eval_batch_size,
        device=device,
    )


def contract_metrics(m: dict[str, float]) -> dict[str, float]:
    """Only the metric keys (drops bookkeeping such as n_users)."""
    return {k: float(v) for k, v in m.items() if "@" in k}


def final_metrics(encoding: Encoding, ds: Dataset, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """metrics.json's valid, test and long-tail test blocks."""
    tail = np.bincount(ds.train[:, 1], minlength=ds.n_items) < cfg.tail_threshold
    test_tail = split_metrics(encoding, ds, "test", cfg, device, item_mask=tail)
    return {
        "valid": contract_metrics(split_metrics(encoding, ds, "valid", cfg, device)),
        "test": contract_metrics(split_metrics(encoding, ds, "test", cfg, device)),
        "test_tail": {
            **contract_metrics(test_tail),
            "n_users": test_tail["n_users"],
            "n_items": int(tail.sum()),
            "threshold": cfg.tail_threshold,
        },
    }


# ------------------------------------------------------------------ training


@contextmanager
def without_onednn() -> Iterator[None]:
    """Turns oneDNN off for the training steps (CPU only; CUDA never uses it). oneDNN
    JIT-compiles and caches one GELU kernel per distinct tensor shape, and a batch's
    number of distinct users and items changes every step: at 10^6 interactions the
    cache grew without bound and each new shape paid a compile (docs/benchmarks.md).
    ATen's own kernels are as fast here."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam at the model's learning rate, as one fused kernel over every parameter
    (MAGNET has ~30 small tensors; the per-tensor loop costs more than the update)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate(), fused=True)


def is_trainable(model: Recommender) -> bool:
    """A model with parameters to learn (popularity has none: it runs no epochs)."""
    return any(p.requires_grad for p in model.parameters())


class Trainer:
    """One model's optimisation: the optimizer, the negative sampler and the weight
    average. `train_epoch` is one epoch of steps (what `fit` loops over and
    bench/training.py times); `evaluated_weights` swaps in the weights that
    evaluation, early stopping and export use."""

    def __init__(self, model: Recommender, ds: Dataset, cfg: TrainConfig, device: torch.device,
                 info: DistInfo | None = None) -> None:
        self.model, self.ds, self.cfg, self.device = model.to(device), ds, cfg, device
        self.info = info or dist_info()
        self.wrapped = data_parallel(model, device)  # forward = the loss
        self.optimizer = make_optimizer(model, cfg)
        self.sampler = NegativeSampler(ds.train, ds.n_items, seed=cfg.seed)
        self.average = WeightAverage(model, cfg.training_defaults().ema_decay)

    def step(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[float, dict[str, float]]:
        """One optimizer step on a batch, then the weight average's update."""
        use_amp = self.device.type == "cuda" and self.cfg.mixed_precision
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, logs = self.wrapped(users, pos, neg)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.average.update()
        return float(loss.detach()), logs

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], dict[str, Any]]:
        """One pass over the training pairs (each rank takes its shard of every batch),
        then the model's end of epoch; returns (mean step logs, the model's epoch logs)."""
        cfg, ds, info = self.cfg, self.ds, self.info
        self.wrapped.train()
        perm = np.random.default_rng(cfg.seed * 100_003 + epoch).permutation(len(ds.train))
        users_all = ds.train[perm, 0]
        pos_all = ds.train[perm, 1]
        neg_all = self.sampler.sample(users_all, self.model.n_negatives)  # same draw on every rank
        sums: dict[str, float] = {}
        n_batches = 0
        batch_size = cfg.train_batch_size(len(perm))
        with without_onednn():
            for start in range(0, len(perm), batch_size):
                stop = min(start + batch_size, len(perm))
                shard = slice(start + info.rank, stop, info.world_size)
                loss, logs = self.step(*(torch.as_tensor(a[shard], device=self.device)
                                         for a in (users_all, pos_all, neg_all)))
                n_batches += 1
                sums["loss"] = sums.get("loss", 0.0) + loss
                for key, value in logs.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
        routing = self.model.epoch_end(epoch, sum_over_ranks) or {}
        return {k: v / max(n_batches, 1) for k, v in sums.items()}, routing

    @contextmanager
    def evaluated_weights(self) -> Iterator[None]:
        """The model in eval mode with the weight average swapped in."""
        self.model.eval()
        with self.average.swapped_in():
            yield


def _postfix(loss: float, recall: float, routing: dict[str, Any]) -> dict[str, str]:
    out = {"loss": f"{loss:.4f}", "valid_R@20": f"{recall:.4f}"}
    if "coverage_entropy" in routing:
        out["H_cov"] = f"{routing['coverage_entropy']:.3f}"
        out["H_item"] = f"{routing['sample_entropy']:.3f}"
        out["stage"] = str(routing.get("stage"))
    return out


def fit(model: Recommender, ds: Dataset, cfg: TrainConfig, device: torch.device) -> tuple[dict, History, int, int]:
    """Trains with early stopping; returns the best epoch's state dict (the weights
    evaluated, i.e. the weight average when it is on), the history, the best epoch and
    the number of epochs run. Under torch.distributed only rank 0 evaluates."""
    trainer = Trainer(model, ds, cfg, device)
    info = trainer.info
    history = History()
    with trainer.evaluated_weights():
        best_state = copy.deepcopy(model.state_dict())
    best_score, best_epoch, since_best, epochs_run = -1.0, 0, 0, 0
    bar = tqdm(
        range(1, cfg.epochs + 1), desc=f"train {cfg.model}", unit="epoch", disable=not (cfg.progress and info.is_main)
    )
    for epoch in bar:
        logs, routing = trainer.train_epoch(epoch)
        epochs_run = epoch
        stop = False
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            if info.is_main:
                with trainer.evaluated_weights():
                    encoding = model.encode()
                    valid = split_metrics(encoding, ds, "valid", cfg, device)
                    recall, score = valid["recall@20"], cfg.selection_score(valid)
                    if score > best_score:
                        best_score, best_epoch, since_best = score, epoch, 0
                        best_state = copy.deepcopy(model.state_dict())
                    else:
                        since_best += 1
                utilization = encoding.expert_utilization()
                if utilization is not None:
                    log.info("expert utilization %s", [round(u, 3) for u in utilization])
                    routing = {**routing, "expert_utilization": utilization}
                history.epochs.append(epoch)
                history.loss.append(logs.get("loss", float("nan")))
                history.valid_recall.append(recall)
                history.valid_score.append(score)
                history.routing.append(routing)
                bar.set_postfix(_postfix(logs.get("loss", float("nan")), recall, routing))
                log.log(
                    logging.DEBUG if cfg.progress else logging.INFO,
                    "epoch %d loss %.4f valid recall@20 %.4f best %s %.4f@%d %s",
                    epoch, logs.get("loss", 0.0), recall, cfg.select_metric, best_score, best_epoch,
                    {k: v for k, v in routing.items() if k in ("stage", "coverage_entropy", "sample_entropy")},
                )
                stop = since_best >= cfg.patience
        if decided_by_main(stop):
            break
    bar.close()
    return best_state, history, best_epoch, epochs_run


# ------------------------------------------------------------------ run directory


def _save_arrays(model: Recommender, encoding: Encoding, ds: Dataset, out: Path,
                 item_files: dict[str, list] | None = None) -> None:
    """RUN/arrays/: everything `magnet export` needs, without the dataset dir
    (including the dataset's optional per-item files, e.g. item_names.json)."""
    out.mkdir(parents=True, exist_ok=True)
    write_item_files(out, item_files or {})
    for name, array in encoding.arrays().items():
        np.save(out / f"{name}.npy", np.ascontiguousarray(array, dtype=np.float32))
    (out / "experts.json").write_text(json.dumps(list(model.experts)))
    (out / "user_ids.json").write_text(json.dumps(list(ds.user_ids)))
    (out / "item_ids.json").write_text(json.dumps(list(ds.item_ids)))
    train = ds.train_matrix()
    np.save(out / "train_indptr.npy", train.indptr.astype(np.int64))
    np.save(out / "train_indices.npy", train.indices.astype(np.int64))


def check_run_out(out: Path, overwrite: bool) -> None:
    """Refuses to replace a finished run unless `overwrite` (checked before any work)."""
    if out.exists() and not overwrite:
        raise TrainError(f"run directory {out} already exists; choose another --out or pass --overwrite")


def train(
    data_dir: Path,
    out: Path,
    cfg: TrainConfig,
    *,
    overwrite: bool = False,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Trains one model and writes the run directory; returns metrics.json's dict."""
    info = dist_info()
    ds = dataset if dataset is not None else load_dataset(data_dir)
    check_run_out(out, overwrite)
    try:  # checked before training, carried into RUN/arrays/ after it
        item_files = read_item_files(Path(data_dir), ds.n_items)
    except ItemFileError as exc:
        raise TrainError(str(exc)) from None
    device = resolve_device(cfg.device)
    if info.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", info.rank % torch.cuda.device_count())
    seed_everything(cfg.seed)
    started = time.perf_counter()
    model = build_model(cfg.model, ds.n_users, ds.n_items, ds.train, ds.features, cfg.model_section())
    history, best_epoch, epochs_run = History(), 0, 0
    if is_trainable(model):
        best_state, history, best_epoch, epochs_run = fit(model, ds, cfg, device)
        model.load_state_dict(best_state)
    train_seconds = time.perf_counter() - started
    if not info.is_main:
        return {}
    model.to(device).eval()
    encoding = model.encode()
    metrics: dict[str, Any] = {
        "model": cfg.model,
        "dataset": ds.name,
        "seed": cfg.seed,
        "best_epoch": best_epoch,
        **final_metrics(encoding, ds, cfg, device),
        "epochs_run": epochs_run,
        "seconds_per_epoch": train_seconds / max(epochs_run, 1),
        "train_seconds": train_seconds,
        "device": device.type,
        "world_size": info.world_size,
    }
    routing = history.routing_block(encoding.expert_utilization())
    if routing is not None:
        metrics["routing"] = routing
    with staged(out) as tmp:
        _write_run(tmp, model, encoding, ds, cfg, metrics, history, data_dir, item_files)
    return metrics


def _write_run(
    tmp: Path,
    model: Recommender,
    encoding: Encoding,
    ds: Dataset,
    cfg: TrainConfig,
    metrics: dict[str, Any],
    history: History,
    data_dir: Path,
    item_files: dict[str, list] | None = None,
) -> None:
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (tmp / "config.yaml").write_text(dump_config(cfg))
    run_info = {
        "data_dir": str(Path(data_dir).resolve()),
        "dataset": ds.name,
        "model": cfg.model,
        "seed": cfg.seed,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / "run.json").write_text(json.dumps(run_info, indent=2))
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "best.pt")  # the evaluated weights
    _save_arrays(model, encoding, ds, tmp / "arrays", item_files)
    if history.epochs:
        from offline.plots import plot_curves

        plot_curves(history, metrics.get("routing"), tmp / "curves.png", title=f"{cfg.model} on {ds.name}")
