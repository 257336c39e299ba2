"""Negative sampling never returns a user's training item and is seed-deterministic."""

import numpy as np

from offline.train import NegativeSampler


def test_negatives_avoid_training_items():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 12
    train = np.array([(u, i) for u in range(n_users) for i in rng.choice(n_items, 9, replace=False)])
    seen = {(int(u), int(i)) for u, i in train}
    users = np.repeat(np.arange(n_users), 50)
    neg = NegativeSampler(train, n_items, seed=1).sample(users)
    assert all((int(u), int(i)) not in seen for u, i in zip(users, neg))
    assert set(neg.tolist()) == set(range(n_items))  # uniform over all items overall


def test_same_seed_same_negatives():
    train = np.array([[0, 0], [1, 1], [2, 2]])
    users = np.array([0, 1, 2] * 20)
    a = NegativeSampler(train, 50, seed=3).sample(users)
    b = NegativeSampler(train, 50, seed=3).sample(users)
    c = NegativeSampler(train, 50, seed=4).sample(users)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_several_negatives_per_row_keep_the_shape_and_avoid_training_items():
    train = np.array([[0, 0], [0, 1], [1, 2]])
    users = np.array([0, 1, 0, 1])
    neg = NegativeSampler(train, 6, seed=0).sample(users, n=5)
    assert neg.shape == (4, 5)
    assert not np.isin(neg[users == 0], [0, 1]).any() and not (neg[users == 1] == 2).any()


def test_dense_and_sorted_key_lookups_draw_the_same_negatives():
    """Small catalogues look membership up in a dense table, large ones binary-search
    the sorted keys; both must see the same items and so draw the same negatives."""
    rng = np.random.default_rng(2)
    train = np.array([(u, i) for u in range(40) for i in rng.choice(25, rng.integers(1, 24), replace=False)])
    users = np.repeat(np.arange(40), 30)
    dense = NegativeSampler(train, 25, seed=7)
    search = NegativeSampler(train, 25, seed=7)
    search.dense = None
    assert dense.dense is not None
    a, b = dense.sample(users, n=3), search.sample(users, n=3)
    assert np.array_equal(a, b)
    seen = {(int(u), int(i)) for u, i in train}
    assert all((int(u), int(i)) not in seen for u, row in zip(users, a) for i in row)
