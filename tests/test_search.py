"""service/search.py's fast helpers equal the plain numpy forms they replace."""

import numpy as np

from service.search import drop_excluded


def test_drop_excluded_is_isin_filtering_in_order():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        cand = rng.integers(0, 50, rng.integers(0, 40))
        exclude = rng.integers(0, 60, rng.integers(0, 30))
        expected = cand[~np.isin(cand, exclude)]
        assert np.array_equal(drop_excluded(cand, exclude), expected)
    cand = np.array([7, 3, 3, 9])
    assert drop_excluded(cand, np.array([], dtype=np.int64)) is cand
    assert drop_excluded(cand, np.array([3])).tolist() == [7, 9]


def test_rank_with_an_id_selector_is_exact_on_a_flat_index_at_scale(tmp_path):
    """ItemSearcher.rank's FAISS path (IDSelectorBitmap) against brute force on 20,000 items: the
    selector's bitmap must stay alive through the search (FAISS keeps a raw pointer to it)."""
    from offline.export import export_bundle
    from offline.synthetic import make_run
    from service.bundle import load_bundle
    from service.search import ItemSearcher

    run = make_run(tmp_path / "run", n_users=10, n_items=20_000, dim=16, n_experts=0, seed=4)
    bundle = load_bundle(export_bundle(run.path, tmp_path / "bundle", exact_max_items=10**6))
    searcher = ItemSearcher(bundle)
    rng = np.random.default_rng(0)
    items = bundle.item_emb.astype(np.float64)
    for _ in range(20):
        query = rng.standard_normal(16).astype(np.float32)
        allowed = np.sort(rng.choice(20_000, 200, replace=False))
        exclude = np.unique(np.concatenate([allowed[:10], rng.choice(20_000, 300, replace=False)]))
        ids, scores = searcher.rank(query, exclude, 20, allowed=allowed, mode="faiss")
        cand = np.setdiff1d(allowed, exclude)
        ref = items[cand] @ query.astype(np.float64)
        order = np.lexsort((cand, -ref))[:20]
        assert ids.tolist() == cand[order].tolist()
        np.testing.assert_allclose(scores, ref[order], rtol=1e-9)


def test_filtered_rank_is_exact_under_hnsw_and_wide_allowed_sets(tmp_path):
    """Under an approximate (HNSW) index a filtered request scans its allowed set: exact however
    wide the set (10,000 of 20,000 items here, past brute_force_max), also chunk by chunk."""
    from offline.export import export_bundle
    from offline.synthetic import make_run
    from service.bundle import load_bundle
    from service.search import ItemSearcher

    run = make_run(tmp_path / "run", n_users=10, n_items=20_000, dim=16, n_experts=0, seed=5)
    bundle = load_bundle(export_bundle(run.path, tmp_path / "bundle", exact_max_items=1000))
    assert bundle.index_info["type"] == "hnsw"
    searcher = ItemSearcher(bundle, brute_force_max=100)
    rng = np.random.default_rng(1)
    items = bundle.item_emb.astype(np.float64)
    for _ in range(10):
        query = rng.standard_normal(16).astype(np.float32)
        allowed = np.sort(rng.choice(20_000, 10_000, replace=False))
        exclude = np.unique(rng.choice(20_000, 1000, replace=False))
        cand = np.setdiff1d(allowed, exclude)
        ref = items[cand] @ query.astype(np.float64)
        want = cand[np.lexsort((cand, -ref))[:20]].tolist()
        assert searcher.rank(query, exclude, 20, allowed=allowed)[0].tolist() == want
        assert searcher._scan(query, cand, 20, chunk=700)[0].tolist() == want  # many chunks
