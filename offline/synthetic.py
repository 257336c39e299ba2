"""Synthetic data with planted multimodal structure, for tests and the demo, and
fabricated run directories (random arrays with the export's invariants) for the
export and serving tests and benchmarks.

Each item has a latent topic. For some items the topic shows in the `text`
features, for the others in the `image` features; the other modality carries only
noise. Users prefer one or two topics, and item popularity follows a power law, so
there is a long tail of items with few interactions. A multimodal model has
something to find, and a test can check that it found it: items whose topic was
planted in modality m should lean on modality m's experts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from offline.dataset import Dataset


@dataclass
class SyntheticSpec:
    """Sizes and strengths of the generated world (the defaults make a small demo set)."""

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
    item_names: list[str] = field(default_factory=list)  # display names (item_names.json)


TOPIC_NAMES = ("Jazz", "Hiking", "Sci-Fi", "Cooking", "Chess", "Gardening", "Cycling", "Astronomy",
               "Pottery", "Sailing", "Baking", "Poetry")
KIND_NAMES = {"text": ("guide", "essay", "handbook"), "image": ("photo book", "poster", "art print")}


def item_names(topic: np.ndarray, planted: np.ndarray, modalities: list[str]) -> list[str]:
    """Readable demo titles that show the planted truth: the topic, and a kind of item
    that fits the modality carrying it (a "guide" is text, a "poster" an image)."""
    names = []
    for i, (t, m) in enumerate(zip(topic.tolist(), planted.tolist())):
        theme = TOPIC_NAMES[t % len(TOPIC_NAMES)] + (f" {t // len(TOPIC_NAMES) + 1}" if t >= len(TOPIC_NAMES) else "")
        kinds = KIND_NAMES.get(modalities[m], (f"{modalities[m]} item",))
        names.append(f"{theme} {kinds[i % len(kinds)]} #{i}")
    return names


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
    return SyntheticData(ds, topic, planted, modalities, inter, item_names(topic, planted, modalities))


# ------------------------------------------------------------------ fabricated runs


DEFAULT_EXPERTS = [
    {"name": "text_dominant", "role": "dominant", "modality": "text"},
    {"name": "meta_dominant", "role": "dominant", "modality": "meta"},
    {"name": "balanced", "role": "balanced", "modality": None},
    {"name": "complementary", "role": "complementary", "modality": None},
]


@dataclass
class FakeRun:
    """A fabricated run and the arrays written into it (for brute-force checks)."""

    path: Path
    user_emb: np.ndarray
    item_emb: np.ndarray
    item_base: np.ndarray
    item_gates: np.ndarray
    item_experts: np.ndarray
    experts: list[dict]
    user_ids: list[str]
    item_ids: list[str]
    train_indptr: np.ndarray
    train_indices: np.ndarray

    def seen(self, user: int) -> np.ndarray:
        """Internal item indices user `user` trained on."""
        return self.train_indices[self.train_indptr[user]: self.train_indptr[user + 1]]


def make_run(
    path: Path,
    *,
    n_users: int = 60,
    n_items: int = 300,
    dim: int = 16,
    n_experts: int = 4,
    k_active: int = 2,
    max_seen: int = 25,
    seed: int = 0,
    model: str = "magnet",
    item_names: list[str | None] | None = None,
    routing: dict | None = None,
) -> FakeRun:
    """Writes a fabricated run directory at `path` (RUN/arrays/ + RUN/metrics.json,
    what `magnet export` reads) and returns what was written. The arrays hold the
    export's invariants: item_emb = item_base + einsum(gates, experts), k non-zero
    gates per item summing to 1, a CSR of training items, external ids that differ
    from the internal indices. For the export and service tests and bench/serving.py,
    which need a bundle of a given size but no training run.

    `n_experts` 0 mimics LightGCN/popularity (gates [I,0], experts [I,0,d]); up to 4
    uses the standard text/meta/balanced/complementary experts, more are named x<n>.
    `item_names` is written as arrays/item_names.json and `routing` as metrics.json's
    routing block, as `magnet train` does when it has them.
    """
    rng = np.random.default_rng(seed)
    arrays = path / "arrays"
    arrays.mkdir(parents=True, exist_ok=True)

    user_emb = (rng.standard_normal((n_users, dim)) / np.sqrt(dim)).astype(np.float32)
    item_base = (rng.standard_normal((n_items, dim)) / np.sqrt(dim)).astype(np.float32)
    item_experts = (rng.standard_normal((n_items, n_experts, dim)) / np.sqrt(dim)).astype(np.float32)
    item_gates = np.zeros((n_items, n_experts), dtype=np.float32)
    if n_experts:
        k = min(k_active, n_experts)
        for i in range(n_items):
            chosen = rng.choice(n_experts, size=k, replace=False)
            w = rng.random(k) + 0.1
            item_gates[i, chosen] = w / w.sum()
    item_emb = (item_base + np.einsum("ie,ied->id", item_gates, item_experts)).astype(np.float32)

    experts = [dict(e) for e in DEFAULT_EXPERTS[:n_experts]]
    experts += [{"name": f"x{n}", "role": "balanced", "modality": None} for n in range(len(experts), n_experts)]

    # Zipf-ish item popularity so the popular fallback has a clear order.
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    weights = weights[rng.permutation(n_items)]
    weights /= weights.sum()
    rows = []
    for _ in range(n_users):
        m = int(rng.integers(1, max(2, min(max_seen, n_items - 1)) + 1))
        rows.append(np.sort(rng.choice(n_items, size=m, replace=False, p=weights)))
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.concatenate(rows).astype(np.int64)

    user_ids = [f"u{n}" for n in rng.permutation(n_users) + 1000]
    item_ids = [f"i{n}" for n in rng.permutation(n_items) + 5000]

    for name, array in {
        "user_emb": user_emb,
        "item_emb": item_emb,
        "item_base": item_base,
        "item_gates": item_gates,
        "item_experts": item_experts,
        "train_indptr": indptr,
        "train_indices": indices,
    }.items():
        np.save(arrays / f"{name}.npy", array)
    (arrays / "experts.json").write_text(json.dumps(experts))
    (arrays / "user_ids.json").write_text(json.dumps(user_ids))
    (arrays / "item_ids.json").write_text(json.dumps(item_ids))
    if item_names is not None:
        (arrays / "item_names.json").write_text(json.dumps(item_names))
    metric = {"recall@10": 0.1, "recall@20": 0.15, "ndcg@10": 0.05, "ndcg@20": 0.07}
    (path / "metrics.json").write_text(json.dumps({
        "model": model, "dataset": "fake", "seed": seed, "best_epoch": 1,
        "valid": metric, "test": metric, "epochs_run": 1, "seconds_per_epoch": 0.1,
        "train_seconds": 0.1, "device": "cpu", **({"routing": routing} if routing is not None else {}),
    }))
    return FakeRun(path, user_emb, item_emb, item_base, item_gates, item_experts, experts,
                   user_ids, item_ids, indptr, indices)
