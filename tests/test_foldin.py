"""Fold-in (service/foldin.py) against independent, by-hand formulations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from offline.export import export_bundle
from offline.synthetic import make_run
from service.bundle import load_bundle
from service.foldin import FoldIn


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path):
    return load_bundle(bundle_dir)


def test_mean_is_the_mean_of_the_item_vectors(bundle):
    items = np.array([3, 17, 17, 250])  # a repeat counts once
    got = FoldIn(bundle, method="mean").vector(items)
    np.testing.assert_allclose(got, bundle.item_emb[[3, 17, 250]].astype(np.float64).mean(axis=0), rtol=1e-12)


def test_als_solves_the_weighted_least_squares_problem_written_out_in_full(bundle):
    alpha, reg = 3.0, 0.5
    items = np.array([5, 40, 41, 299])
    got = FoldIn(bundle, method="als", als_alpha=alpha, als_reg=reg).vector(items)
    y = bundle.item_emb.astype(np.float64)
    p = np.zeros(bundle.n_items)
    p[items] = 1.0
    c = 1.0 + alpha * p  # confidence 1 + alpha on the history, 1 elsewhere
    expected = np.linalg.solve(y.T @ (c[:, None] * y) + reg * np.eye(bundle.dim), y.T @ (c * p))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    # and it is a minimum: the gradient of sum c (p - y x)^2 + reg |x|^2 vanishes there
    grad = -2 * y.T @ (c * (p - y @ got)) + 2 * reg * got
    assert np.abs(grad).max() < 1e-9


def test_graph_map_recovers_users_that_are_a_linear_image_of_their_items(tmp_path):
    """Users built as e_u = a_u W (a_u the normalised propagation of their items): the map fitted at
    load recovers W, so folding a trained user's own items in gives back its trained vector."""
    run = make_run(tmp_path / "run", n_users=80, n_items=200, dim=8, seed=3)
    arrays = run.path / "arrays"
    indptr, indices = np.load(arrays / "train_indptr.npy"), np.load(arrays / "train_indices.npy")
    item_emb = np.load(arrays / "item_emb.npy").astype(np.float64)
    degree = np.bincount(indices, minlength=200).astype(np.float64)
    w_true = np.random.default_rng(0).standard_normal((8, 8))
    users = []
    for u in range(80):
        seen = np.unique(indices[indptr[u]:indptr[u + 1]])
        a = (item_emb[seen] / np.sqrt(degree[seen] + 1)[:, None]).sum(axis=0) / np.sqrt(seen.size)
        users.append(a @ w_true)
    np.save(arrays / "user_emb.npy", np.array(users, dtype=np.float32))
    b = load_bundle(export_bundle(run.path, tmp_path / "bundle"))
    fold = FoldIn(b, method="graph", graph_reg=1e-9)
    for u in (0, 7, 79):
        np.testing.assert_allclose(fold.user_vector(None, b.seen(u)), b.user_emb[u], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["mean", "als", "graph"])
def test_known_user_keeps_its_vector_and_moves_by_the_change_of_its_fold_in(bundle, method):
    fold = FoldIn(bundle, method=method)
    u = 4
    seen = bundle.seen(u)
    assert np.array_equal(fold.user_vector(u, np.zeros(0, dtype=np.int64)), bundle.user_emb[u])
    assert np.array_equal(fold.user_vector(u, seen[:2]), bundle.user_emb[u])  # nothing the model has not seen
    new = np.setdiff1d(np.arange(bundle.n_items), seen)[:3]
    expected = bundle.user_emb[u] + fold.vector(np.union1d(seen, new)) - fold.vector(seen)
    np.testing.assert_allclose(fold.user_vector(u, new), expected.astype(np.float32), rtol=1e-6)
    assert fold.user_vector(None, np.zeros(0, dtype=np.int64)) is None
    assert fold.user_vector(None, new).dtype == np.float32


def test_new_users_and_known_users_each_use_their_own_method(bundle):
    fold = FoldIn(bundle, method="mean", known_method="graph")
    u = 4
    seen = bundle.seen(u)
    new = np.setdiff1d(np.arange(bundle.n_items), seen)[:3]
    # a new user: the mean of the items' vectors
    np.testing.assert_allclose(fold.user_vector(None, new), bundle.item_emb[new].astype(np.float64).mean(axis=0),
                               rtol=1e-6)
    # a known user: moved by the graph fold-in, not the mean
    graph = FoldIn(bundle, method="graph")
    moved = bundle.user_emb[u] + graph.vector(np.union1d(seen, new)) - graph.vector(seen)
    np.testing.assert_allclose(fold.user_vector(u, new), moved.astype(np.float32), rtol=1e-6)
    by_mean = FoldIn(bundle, method="mean").user_vector(u, new)
    assert not np.allclose(fold.user_vector(u, new), by_mean)


def test_unknown_method_is_refused(bundle):
    with pytest.raises(ValueError, match="unknown fold-in method 'knn'"):
        FoldIn(bundle, method="knn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown fold-in method 'svd'"):
        FoldIn(bundle, method="als", known_method="svd")  # type: ignore[arg-type]


def test_settings_name_the_methods():
    from service.settings import Settings

    schema = json.dumps(Settings.model_json_schema())
    assert all(m in schema for m in ("mean", "als", "graph"))
