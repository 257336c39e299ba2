"""bench/cold_start.py's protocol pieces on hand-computed cases: the held-out choice,
the cold ranking metrics and the full-catalogue recall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cold_start import collaborative_vectors, full_recall, hold_out, normalised_content, ranking_metrics


def test_hold_out_is_a_deterministic_tenth_of_the_items_with_interactions() -> None:
    inter = pd.DataFrame({"item_id": [str(i) for i in range(1, 101)] * 2 + ["007"]})
    a = hold_out(inter, "item_id", 0.1, seed=0)
    assert len(a) == 10 and a == hold_out(inter.sample(frac=1, random_state=3), "item_id", 0.1, seed=0)
    assert a != hold_out(inter, "item_id", 0.1, seed=1)
    assert a == sorted(a, key=int) and set(a) <= set(inter["item_id"])


def test_ranking_metrics_by_hand() -> None:
    scores = np.array([[0.9, 0.1, 0.5, 0.3],   # order 0, 2, 3, 1
                       [0.1, 0.2, 0.3, 0.4]])  # order 3, 2, 1, 0
    relevant = [np.array([2, 1]), np.array([0])]
    m = ranking_metrics(scores, relevant, k=2)
    # user 0: top-2 = {0, 2}: 1 of 2 relevant, DCG = 1/log2(3), IDCG = 1 + 1/log2(3)
    # user 1: top-2 = {3, 2}: 0 of 1
    assert m["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["ndcg@2"] == pytest.approx(((1 / np.log2(3)) / (1 + 1 / np.log2(3)) + 0.0) / 2)


def test_full_recall_ranks_new_items_among_all_without_the_seen_ones() -> None:
    user = np.array([[1.0, 0.0]])
    old = np.array([[5.0, 0.0], [0.5, 0.0], [0.1, 0.0]])
    new = np.array([[1.0, 0.0], [0.2, 0.0]])
    # old item 0 (score 5) is seen and removed: top-2 = new 0 (1.0), old 1 (0.5)
    assert full_recall(user, old, new, [np.array([0])], [np.array([0, 1])], k=2) == pytest.approx(0.5)
    # not removed, it pushes new 0 to second place: top-2 = old 0, new 0
    assert full_recall(user, old, new, [np.array([], dtype=int)], [np.array([1])], k=2) == 0.0


def test_normalised_content_is_unit_length_with_each_modality_weighted_alike() -> None:
    x = normalised_content({"a": np.array([[3.0, 4.0]]), "b": np.array([[0.0, 10.0, 0.0]])})
    np.testing.assert_allclose(x, [[0.6 / np.sqrt(2), 0.8 / np.sqrt(2), 0.0, 1 / np.sqrt(2), 0.0]])


def test_collaborative_vectors_reorders_users_and_reuses_a_finished_run(tmp_path: Path) -> None:
    """The LightGCN baseline's user rows must line up with the MAGNET bundle's user order."""
    arrays = tmp_path / "run" / "arrays"
    arrays.mkdir(parents=True)
    (tmp_path / "run" / "metrics.json").write_text("{}")  # a finished run: nothing is trained
    (arrays / "user_ids.json").write_text(json.dumps(["b", "c", "a"]))
    np.save(arrays / "user_emb.npy", np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], dtype=np.float32))
    np.save(arrays / "item_emb.npy", np.eye(2, dtype=np.float32))
    user, item = collaborative_vectors(tmp_path / "data", tmp_path / "run", "lightgcn", 0, ["a", "b", "c"])
    assert user[:, 0].tolist() == [3.0, 1.0, 2.0]
    assert item.dtype == np.float64 and item.shape == (2, 2)
