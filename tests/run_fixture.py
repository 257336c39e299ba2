"""Fabricates a consistent run directory (RUN/arrays/ + RUN/metrics.json) from random numbers.

Shared by the export and service tests so neither needs torch or a training run.
The arrays satisfy the seams in docs/architecture.md: item_emb = item_base +
einsum(gates, experts), k=2 non-zero gates per item summing to 1, a CSR of training
items, external ids that differ from the internal indices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
) -> FakeRun:
    """Writes a run directory at `path` and returns what was written.

    `n_experts` 0 mimics LightGCN/popularity (gates [I,0], experts [I,0,d]); up to 4
    uses the standard text/meta/balanced/complementary experts, more are named x<n>.
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
    metric = {"recall@10": 0.1, "recall@20": 0.15, "ndcg@10": 0.05, "ndcg@20": 0.07}
    (path / "metrics.json").write_text(json.dumps({
        "model": model, "dataset": "fake", "seed": seed, "best_epoch": 1,
        "valid": metric, "test": metric, "epochs_run": 1, "seconds_per_epoch": 0.1,
        "train_seconds": 0.1, "device": "cpu",
    }))
    return FakeRun(path, user_emb, item_emb, item_base, item_gates, item_experts, experts,
                   user_ids, item_ids, indptr, indices)


def flip_byte(path: Path, offset: int = -1) -> None:
    """Corrupts one byte of `path` in place (default: the last, i.e. array data)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def brute_force_topk(run: FakeRun, user: int, k: int) -> tuple[list[int], np.ndarray]:
    """Reference ranking: float64 e_u . e_i, training items removed, ties by index."""
    scores = run.item_emb.astype(np.float64) @ run.user_emb[user].astype(np.float64)
    scores[run.seen(user)] = -np.inf
    order = np.lexsort((np.arange(scores.size), -scores))
    order = [int(i) for i in order if np.isfinite(scores[i])][:k]
    return order, scores[order]
