"""Torch models (no file I/O). `build` makes a model by name."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from model.base import Encoding, Recommender
from model.lightgcn import LightGCN, LightGCNConfig
from model.magnet import MAGNET, MagnetConfig
from model.popularity import Popularity, PopularityConfig

CONFIGS: dict[str, type[BaseModel]] = {"lightgcn": LightGCNConfig, "magnet": MagnetConfig, "popularity": PopularityConfig}
MODELS: dict[str, type[Recommender]] = {"lightgcn": LightGCN, "magnet": MAGNET, "popularity": Popularity}

__all__ = ["CONFIGS", "MODELS", "Encoding", "Recommender", "build"]


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
    if name == "magnet":  # the only model that reads item content
        return MAGNET(n_users, n_items, train_edges, features, cfg)
    return MODELS[name](n_users, n_items, train_edges, cfg)
