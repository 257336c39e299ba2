"""Online serving, the user side, over real HTTP: POST /recommend/{user_id} (history, exclude,
candidates, filter), fold-in of unknown users, exact filtered top-k (flat and HNSW, brute
force and FAISS ID selector), and the 422s of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from offline.export import export_bundle
from offline.synthetic import make_run
from service.bundle import load_bundle
from service.foldin import FoldIn
from service.settings import Settings
from service.item_files import ITEM_ATTRIBUTES
from service.schemas import Recommendation
from service.search import score_items

GENRES = ("action", "comedy", "drama", "horror", "scifi")

# the fold-in a server uses unless told: new users, known users
DEFAULTS = {"method": Settings.model_fields["foldin_method"].default,
            "known_method": Settings.model_fields["foldin_known_method"].default}


def attributes(n_items: int) -> list[dict[str, list[str]] | None]:
    """genre: one or two of GENRES (multi-valued), decade: one value; every 7th item has none."""
    rng = np.random.default_rng(5)
    out: list[dict[str, list[str]] | None] = []
    for i in range(n_items):
        if i % 7 == 6:
            out.append(None)
            continue
        genres = sorted(set(rng.choice(GENRES, size=int(rng.integers(1, 3))).tolist()))
        out.append({"genre": genres, "decade": [str(1970 + 10 * (i % 4))]})
    return out


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("runs") / "online", seed=2, n_users=60, n_items=300)
    (run.path / "arrays" / ITEM_ATTRIBUTES).write_text(json.dumps(attributes(300)))
    return run


@pytest.fixture(scope="module", params=["flat", "hnsw"])
def online_bundle(request, online_run, tmp_path_factory) -> Path:
    exact_max = 10**6 if request.param == "flat" else 10
    return export_bundle(online_run.path, tmp_path_factory.mktemp("bundles") / request.param,
                         exact_max_items=exact_max)


@pytest.fixture(scope="module", params=["brute", "selector"])
def server(request, start_module_server, online_bundle):
    """Both retrieval paths of a filtered request: scoring the allowed set (default) and the FAISS
    search with an ID selector (brute_force_max=0)."""
    extra = {"brute_force_max": 0} if request.param == "selector" else {}
    return start_module_server(bundle=online_bundle, max_history=50, max_exclude=60, max_candidates=250, **extra)


@pytest.fixture(scope="module")
def loaded(online_bundle):
    return load_bundle(online_bundle)


def brute_force(bundle, vec: np.ndarray, excluded, allowed, k: int) -> tuple[list[str], np.ndarray]:
    """Plain top-k: every allowed item not excluded, scored, best first (ties by item index)."""
    keep = np.ones(bundle.n_items, dtype=bool) if allowed is None else np.isin(np.arange(bundle.n_items), allowed)
    keep[list(excluded)] = False
    cand = np.flatnonzero(keep)
    scores = bundle.item_emb[cand].astype(np.float64) @ vec.astype(np.float64)
    order = np.lexsort((cand, -scores))[:k]
    return [bundle.item_ids[i] for i in cand[order]], scores[order]


def ids_of(bundle, items) -> list[str]:
    return [bundle.item_ids[i] for i in items]


def test_unknown_user_is_folded_in_from_history(server, loaded):
    history = [3, 50, 51, 120, 200]
    r = server.client().post("/recommend/newcomer", json={"k": 15, "history": ids_of(loaded, history)})
    assert r.status_code == 200
    body = Recommendation.model_validate(r.json())
    assert body.fallback == "history" and body.user_id == "newcomer"
    vec = FoldIn(loaded, **DEFAULTS).user_vector(None, np.array(history)).astype(np.float32)
    ref, ref_scores = brute_force(loaded, vec, history, None, 15)
    assert [it.item_id for it in body.items] == ref
    np.testing.assert_allclose([it.score for it in body.items], ref_scores, rtol=1e-9)


def test_known_user_with_history_is_its_trained_vector_moved_and_never_gets_seen_or_history(server, loaded):
    u = 9
    seen = loaded.seen(u).tolist()
    new = [i for i in range(loaded.n_items) if i not in seen][:4]
    body = server.client().post(f"/recommend/{loaded.user_ids[u]}",
                                json={"k": 20, "history": ids_of(loaded, new)}).json()
    assert body["fallback"] is None
    vec = FoldIn(loaded, **DEFAULTS).user_vector(u, np.array(new))
    ref, _ = brute_force(loaded, vec, seen + new, None, 20)
    assert [it["item_id"] for it in body["items"]] == ref


@pytest.mark.parametrize("filt", [{"genre": "comedy"}, {"genre": ["horror", "scifi"]},
                                  {"genre": ["drama"], "decade": 1990}, {"decade": ["1970", "2000"]}])
def test_filtered_top_k_equals_brute_force(server, loaded, filt):
    attrs = attributes(loaded.n_items)

    def matches(i: int) -> bool:
        a = attrs[i] or {}
        return all(set(map(str, v if isinstance(v, list) else [v])) & set(a.get(name, []))
                   for name, v in filt.items())

    allowed = [i for i in range(loaded.n_items) if matches(i)]
    assert 0 < len(allowed) < loaded.n_items
    u = 11
    exclude = allowed[:5]
    body = server.client().post(f"/recommend/{loaded.user_ids[u]}",
                                json={"k": 12, "filter": filt, "exclude": ids_of(loaded, exclude)}).json()
    ref, ref_scores = brute_force(loaded, loaded.user_emb[u], set(loaded.seen(u).tolist()) | set(exclude), allowed, 12)
    assert [it["item_id"] for it in body["items"]] == ref
    np.testing.assert_allclose([it["score"] for it in body["items"]], ref_scores, rtol=1e-9)


def test_candidates_and_filter_together_and_exact_k_larger_than_what_remains(server, loaded):
    u = 0
    candidates = list(range(0, 300, 3))
    body = server.client().post(f"/recommend/{loaded.user_ids[u]}",
                                json={"k": 1000, "candidates": ids_of(loaded, candidates),
                                      "filter": {"genre": "action"}}).json()
    attrs = attributes(loaded.n_items)
    allowed = [i for i in candidates if attrs[i] and "action" in attrs[i]["genre"]]
    ref, _ = brute_force(loaded, loaded.user_emb[u], set(loaded.seen(u).tolist()), allowed, 1000)
    assert [it["item_id"] for it in body["items"]] == ref  # everything that remains, best first
    assert len(ref) == len(set(allowed) - set(loaded.seen(u).tolist()))


def test_get_takes_exclude(server, loaded):
    u = 5
    c = server.client()
    plain = [it["item_id"] for it in c.get(f"/recommend/{loaded.user_ids[u]}", params={"k": 5}).json()["items"]]
    r = c.get(f"/recommend/{loaded.user_ids[u]}", params={"k": 5, "exclude": f"{plain[0]},{plain[2]}"})
    got = [it["item_id"] for it in r.json()["items"]]
    assert got[:3] == [plain[1], plain[3], plain[4]] and plain[0] not in got and plain[2] not in got
    ref, _ = brute_force(loaded, loaded.user_emb[u], set(loaded.seen(u).tolist()) |
                         {loaded.item_ids.index(plain[0]), loaded.item_ids.index(plain[2])}, None, 5)
    assert got == ref


def test_empty_or_all_excluded_history_falls_back_to_popular(server, loaded):
    c = server.client()
    empty = c.post("/recommend/nobody", json={"k": 5}).json()
    assert empty["fallback"] == "popular"
    h = ids_of(loaded, [1, 2])
    excluded = c.post("/recommend/nobody", json={"k": 5, "history": h, "exclude": h}).json()
    assert excluded["fallback"] == "popular"
    assert not set(h) & {it["item_id"] for it in excluded["items"]}
    order = np.lexsort((np.arange(loaded.n_items), -loaded.popularity.astype(np.float64)))
    assert [it["item_id"] for it in excluded["items"]] == [loaded.item_ids[i] for i in order if i not in (1, 2)][:5]
    # the popular fallback honours a filter too
    filtered = c.post("/recommend/nobody", json={"k": 5, "filter": {"decade": "1980"}}).json()
    assert all("1980" in (attributes(loaded.n_items)[loaded.item_ids.index(it["item_id"])] or {}).get("decade", [])
               for it in filtered["items"])


def test_bad_input_is_422_naming_the_problem(server, loaded):
    c = server.client()
    user = loaded.user_ids[0]
    for field in ("history", "exclude", "candidates"):
        r = c.post(f"/recommend/{user}", json={field: [loaded.item_ids[0], "no-such-item", "nope-2"]})
        assert r.status_code == 422, field
        text = json.dumps(r.json())
        assert "no-such-item" in text and "nope-2" in text and field in text
    r = c.post(f"/recommend/{user}", json={"filter": {"colour": "red"}})
    assert r.status_code == 422 and "colour" in r.text and "decade, genre" in r.text
    r = c.post(f"/recommend/{user}", json={"k": 5, "surprise": 1})
    assert r.status_code == 422 and "surprise" in r.text
    for field, limit in (("history", 50), ("exclude", 60), ("candidates", 250)):
        r = c.post(f"/recommend/{user}", json={field: loaded.item_ids[: limit + 1]})
        assert r.status_code == 422 and f"at most {limit}" in r.text, field
    assert c.post(f"/recommend/{user}", json={"k": 0}).status_code == 422
    assert c.post(f"/recommend/{user}", json={"k": 1001}).status_code == 422
    r = c.get(f"/recommend/{user}", params={"exclude": "zz-unknown"})
    assert r.status_code == 422 and "zz-unknown" in r.text
    for raw in (b"{not json", b"\xcf\x80\xff", b"[1, 2]", b'{"history": "abc"}'):
        r = c.post(f"/recommend/{user}", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body", raw
    # no body at all: every field at its default, the same answer as GET
    assert c.post(f"/recommend/{user}").json() == c.get(f"/recommend/{user}").json()


def test_bundle_without_attributes_names_that_in_the_422(start_server, bundle_dir, fake_run):
    live = start_server(bundle=bundle_dir)
    r = live.client().post(f"/recommend/{fake_run.user_ids[0]}", json={"filter": {"genre": "x"}})
    assert r.status_code == 422 and "no item attributes" in r.text


def test_item_attributes_travel_from_import_to_the_bundle(tmp_path):
    """magnet import --meta-cols writes item_attributes.json (multi-valued cells split as the meta
    features split them); training/export carry it like item_names.json."""
    from offline.importer import import_dataset

    rows = [(u, i, 1000 + 10 * u + i) for u in range(12) for i in range(8) if (u + i) % 3]
    inter = tmp_path / "inter.csv"
    inter.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    items = tmp_path / "items.csv"
    items.write_text("item_id,genres,year\n" + "".join(
        f"{i},{'Action|Comedy' if i % 2 else 'Drama'},{1990 + i}\n" for i in range(8)))
    ds = import_dataset(inter, items, meta_cols=["genres", "year"], kcore=1, name="t", out=tmp_path / "data",
                        meta_dim=4)
    attrs = json.loads((tmp_path / "data" / ITEM_ATTRIBUTES).read_text())
    assert len(attrs) == ds.n_items
    for ext, entry in zip(ds.item_ids, attrs):
        i = int(ext)
        assert entry == {"genres": ["Action", "Comedy"] if i % 2 else ["Drama"], "year": [str(1990 + i)]}


@pytest.mark.parametrize("method", ["mean", "als", "graph"])
def test_each_fold_in_method_serves_its_own_vector(start_server, online_run, tmp_path, method):
    bundle = export_bundle(online_run.path, tmp_path / "b")
    loaded = load_bundle(bundle)
    live = start_server(bundle=bundle, foldin_method=method)
    history = [4, 8, 15, 16, 23, 42]
    body = live.client().post("/recommend/fresh", json={"k": 10, "history": ids_of(loaded, history)}).json()
    vec = FoldIn(loaded, method=method).user_vector(None, np.array(history))
    ref, ref_scores = brute_force(loaded, vec, history, None, 10)
    assert [it["item_id"] for it in body["items"]] == ref
    np.testing.assert_allclose([it["score"] for it in body["items"]], ref_scores, rtol=1e-9)
