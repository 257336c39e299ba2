"""Evaluation protocol on a case computed by hand (MMRec's full-ranking rules)."""

import math

import numpy as np
import pytest
import torch

from offline.evaluate import embedding_scorer, evaluate, relevance_matrix

SCORES = torch.tensor(
    [
        [9.0, 8.0, 1.0, 7.0, 2.0],  # user 0: item 0 is a training item -> masked
        [5.0, 4.0, 3.0, 2.0, 1.0],  # user 1: its one relevant item ranks last
        [1.0, 1.0, 1.0, 1.0, 1.0],  # user 2: nothing relevant -> not averaged
    ]
)


def _run(ks):
    train = relevance_matrix(np.array([[0, 0]]), 3, 5)
    relevant = relevance_matrix(np.array([[0, 1], [0, 3], [1, 4]]), 3, 5)
    return evaluate(lambda users: SCORES[users], train, relevant, ks=ks, batch_size=2)


def test_hand_computed_metrics():
    m = _run((1, 2, 5))
    assert m["n_users"] == 2
    # user 0 ranks 1, 3, 4, 2, (0 masked): two hits at ranks 1-2 of 2 relevant.
    # user 1 ranks its single relevant item 5th.
    expected = {
        "recall@1": (0.5 + 0) / 2,
        "ndcg@1": (1 + 0) / 2,
        "precision@1": (1 + 0) / 2,
        "map@1": (1 + 0) / 2,
        "recall@2": (1 + 0) / 2,
        "ndcg@2": (1 + 0) / 2,
        "precision@2": (1 + 0) / 2,
        "map@2": (1 + 0) / 2,
        "recall@5": (1 + 1) / 2,
        "ndcg@5": (1 + 1 / math.log2(6)) / 2,
        "precision@5": (2 / 5 + 1 / 5) / 2,
        "map@5": (1 + 1 / 5) / 2,
    }
    for name, value in expected.items():
        assert m[name] == pytest.approx(value, abs=1e-6), name


def test_masked_training_item_is_never_a_hit():
    # If item 0 were relevant for user 0 it still could not be retrieved: it is masked.
    train = relevance_matrix(np.array([[0, 0]]), 3, 5)
    relevant = relevance_matrix(np.array([[0, 0]]), 3, 5)
    m = evaluate(lambda u: SCORES[u], train, relevant, ks=(4,))
    assert m["recall@4"] == 0.0
    m5 = evaluate(lambda u: SCORES[u], train, relevant, ks=(5,))
    assert m5["recall@5"] == 1.0  # masked items sink to the bottom, rank 5


def test_ndcg_partial_order():
    # Relevant items at ranks 2 and 3 of 3 relevant: DCG = 1/log2(3) + 1/log2(4),
    # IDCG@3 = 1 + 1/log2(3) + 1/log2(4).
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    train = relevance_matrix(np.zeros((0, 2), dtype=np.int64), 1, 4)
    relevant = relevance_matrix(np.array([[0, 1], [0, 2], [0, 3]]), 1, 4)
    m = evaluate(lambda u: scores[u], train, relevant, ks=(3,))
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@3"] == pytest.approx(dcg / idcg, abs=1e-6)
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["map@3"] == pytest.approx((1 / 2 + 2 / 3) / 3)


def test_item_mask_restricts_relevant_items():
    pairs = np.array([[0, 1], [0, 3], [1, 4]])
    tail = np.array([False, False, False, True, True])
    relevant = relevance_matrix(pairs, 3, 5, item_mask=tail)
    assert relevant.nnz == 2 and relevant[0, 1] == 0


def test_embedding_scorer_is_dot_product():
    u = torch.tensor([[1.0, 2.0]])
    i = torch.tensor([[3.0, 4.0], [0.5, -1.0]])
    out = embedding_scorer(u, i)(torch.tensor([0]))
    assert torch.allclose(out, torch.tensor([[11.0, -1.5]]))


def test_bad_ks_rejected():
    with pytest.raises(ValueError):
        _run((0,))
