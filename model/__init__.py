"""Torch models (no file I/O). `build` makes a trainable model by name."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from model.base import Recommender
from model.lightgcn import LightGCN, LightGCNConfig
from model.magnet import MAGNET, MagnetConfig

CONFIGS: dict[str, type[BaseModel]] = {"lightgcn": LightGCNConfig, "magnet": MagnetConfig}
MODELS: dict[str, type[Recommender]] = {"lightgcn": LightGCN, "magnet": MAGNET}


def build(
    name: str,
    n_users: int,
    n_items: int,
    train_edges: np.ndarray,
    features: dict[str, np.ndarray],
    cfg: BaseModel | dict[str, Any] | None = None,
) -> Recommender:
    """Instantiates model `name` with its config (a dict is validated first)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    config_cls = CONFIGS[name]
    if cfg is None:
        cfg = config_cls()
    elif isinstance(cfg, dict):
        cfg = config_cls.model_validate(cfg)
    if name == "lightgcn":
        return LightGCN(n_users, n_items, train_edges, cfg)
    return MAGNET(n_users, n_items, train_edges, features, cfg)
