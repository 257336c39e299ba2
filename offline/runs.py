"""Reading a finished run directory back (for `magnet evaluate`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline.dataset import load_dataset
from offline.evaluate import embedding_scorer, evaluate, relevance_matrix
from offline.train import TrainError


def read_run(run: Path) -> dict[str, Any]:
    """run.json of a finished run; a clear error when RUN is not one."""
    info = run / "run.json"
    if not (run / "metrics.json").is_file() or not info.is_file():
        raise TrainError(f"{run} is not a finished run directory (no metrics.json/run.json)")
    return json.loads(info.read_text())


def evaluate_run(run: Path, split: str, ks: tuple[int, ...] = (10, 20)) -> dict[str, Any]:
    """Recomputes the split's metrics from RUN/arrays and the run's dataset."""
    info = read_run(run)
    data_dir = Path(info["data_dir"])
    if not data_dir.exists():
        raise TrainError(f"the run's dataset directory {data_dir} no longer exists")
    ds = load_dataset(data_dir)
    arrays = run / "arrays"
    user_emb = torch.as_tensor(np.load(arrays / "user_emb.npy", allow_pickle=False))
    item_emb = torch.as_tensor(np.load(arrays / "item_emb.npy", allow_pickle=False))
    if user_emb.shape[0] != ds.n_users or item_emb.shape[0] != ds.n_items:
        raise TrainError(
            f"run {run} has {user_emb.shape[0]} users / {item_emb.shape[0]} items "
            f"but dataset {data_dir} has {ds.n_users} / {ds.n_items}"
        )
    metrics = evaluate(
        embedding_scorer(user_emb, item_emb),
        ds.train_matrix(),
        relevance_matrix(getattr(ds, split), ds.n_users, ds.n_items),
        ks=ks,
    )
    return {"model": info["model"], "dataset": ds.name, "split": split, **metrics}
