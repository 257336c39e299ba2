"""Synthetic data with planted multimodal structure, for tests and the demo.

Each item has a latent topic. For some items the topic shows in the `text`
features, for the others in the `image` features; the other modality carries only
noise. Users prefer one or two topics, and item popularity follows a power law, so
there is a long tail of items with few interactions. A multimodal model has
something to find, and a test can check that it found it: items whose topic was
planted in modality m should lean on modality m's experts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from offline.dataset import Dataset


@dataclass
class SyntheticSpec:
    """Sizes and strengths of the generated world (defaults make a ~1 s demo set)."""

    n_users: int = 400
    n_items: int = 500
    n_topics: int = 8
    dims: dict[str, int] = field(default_factory=lambda: {"text": 32, "image": 48})
    mean_interactions: float = 25.0
    popularity_exponent: float = 0.9
    topic_focus: float = 0.85
    signal: float = 1.0
    noise: float = 0.35
    seed: int = 0


@dataclass
class SyntheticData:
    """The dataset plus the ground truth that was planted into it."""

    dataset: Dataset
    item_topic: np.ndarray
    planted_modality: np.ndarray  # index into `modalities` for each item
    modalities: list[str]
    interactions: pd.DataFrame  # user, item, timestamp, x_label (external ids = internal)


def _features(spec: SyntheticSpec, rng: np.random.Generator, topic: np.ndarray, planted: np.ndarray) -> dict:
    feats: dict[str, np.ndarray] = {}
    for m, (name, dim) in enumerate(sorted(spec.dims.items())):
        prototypes = rng.normal(size=(spec.n_topics, dim))
        prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
        x = rng.normal(scale=spec.noise, size=(spec.n_items, dim))
        shown = planted == m
        x[shown] += spec.signal * prototypes[topic[shown]]
        feats[name] = x.astype(np.float32)
    return feats


def _interactions(spec: SyntheticSpec, rng: np.random.Generator, topic: np.ndarray) -> pd.DataFrame:
    ranks = rng.permutation(spec.n_items) + 1
    popularity = ranks.astype(np.float64) ** -spec.popularity_exponent
    rows = []
    for user in range(spec.n_users):
        liked = rng.choice(spec.n_topics, size=rng.integers(1, 3), replace=False)
        pref = np.full(spec.n_topics, (1 - spec.topic_focus) / spec.n_topics)
        pref[liked] += spec.topic_focus / len(liked)
        weights = popularity * pref[topic]
        weights /= weights.sum()
        n = int(np.clip(rng.lognormal(np.log(spec.mean_interactions), 0.5), 5, spec.n_items // 2))
        items = rng.choice(spec.n_items, size=n, replace=False, p=weights)
        times = np.sort(rng.integers(1_600_000_000, 1_700_000_000, size=n))
        rows.append(pd.DataFrame({"user": user, "item": items, "timestamp": times}))
    return pd.concat(rows, ignore_index=True)


def generate(spec: SyntheticSpec | None = None, name: str = "synthetic") -> SyntheticData:
    """Builds the planted world deterministically from ``spec.seed``."""
    from offline.importer import assign_split

    spec = spec or SyntheticSpec()
    if len(spec.dims) < 1:
        raise ValueError("at least one modality is needed")
    rng = np.random.default_rng(spec.seed)
    topic = rng.integers(0, spec.n_topics, size=spec.n_items)
    modalities = sorted(spec.dims)
    planted = rng.integers(0, len(modalities), size=spec.n_items)
    features = _features(spec, rng, topic, planted)
    inter = _interactions(spec, rng, topic)
    inter["x_label"] = assign_split(inter, user_col="user", item_col="item", time_col="timestamp")
    pairs = {label: inter.loc[inter.x_label == label, ["user", "item"]].to_numpy(np.int64) for label in (0, 1, 2)}
    ds = Dataset(
        name=name,
        n_users=spec.n_users,
        n_items=spec.n_items,
        train=pairs[0],
        valid=pairs[1],
        test=pairs[2],
        features=features,
        user_ids=[str(u) for u in range(spec.n_users)],
        item_ids=[str(i) for i in range(spec.n_items)],
    )
    return SyntheticData(ds, topic, planted, modalities, inter)
