"""`magnet add-items`: new items embedded from content alone into a complete verified
bundle, served with "cold": true and explanations that add up, and its bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from offline.add_items import AddItemsError, add_items, rebuild_model
from offline.config import load_config
from offline.export import export_bundle
from offline.importer import import_dataset
from offline.item_encoders import ENCODERS_DIR, encode_items
from offline.train import train
from service.bundle import load_bundle

N_ITEMS = 60
NEW = [("n1", "Ocean story", "Drama|Romance", "t1|t3"), ("n2", "Robot war", "Action|Sci-Fi", "t2"),
       ("n3", "Quiet farm", "Drama", "t4|zzz-unseen")]
HEADER = "item_id,title,genres,tags"


def _items_csv(path: Path, rows: list[tuple], header: str = HEADER) -> Path:
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small catalogue imported with the real sentence encoder, MAGNET trained 3 epochs,
    and a LightGCN run on the same data."""
    root = tmp_path_factory.mktemp("add_items")
    rng = np.random.default_rng(0)
    genres = ["Drama", "Action", "Sci-Fi", "Romance", "Comedy"]
    lines = []
    for i in range(N_ITEMS):
        g = "|".join(rng.choice(genres, rng.integers(1, 3), replace=False))
        lines.append((str(i), f"Film {i} about {genres[i % 5].lower()}", g, f"t{i % 7}|t{i % 3}"))
    items = _items_csv(root / "items.csv", lines)
    rows = [f"{u},{i},{t}" for u in range(50) for t, i in enumerate(rng.choice(N_ITEMS, 8, replace=False))]
    inter = root / "inter.csv"
    inter.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    data = root / "data"
    import_dataset(inter, items, text_cols=["title", "genres"], meta_cols=["genres", "tags"], kcore=0,
                   name="t", out=data, meta_dim=8)
    runs = {}
    for model in ("magnet", "lightgcn"):
        cfg = load_config(None, ["progress=false", "magnet.dim=8", "magnet.expert_hidden=8", "magnet.knn_k=4",
                                 "lightgcn.dim=8"], model=model, epochs=3, seed=0, device="cpu")
        runs[model] = root / f"run-{model}"
        train(data, runs[model], cfg)
    return {"root": root, "data": data, "items": items, "magnet": runs["magnet"], "lightgcn": runs["lightgcn"]}


def test_added_items_join_the_run_items_in_a_verified_bundle(trained: dict[str, Path], tmp_path: Path) -> None:
    new_csv = _items_csv(tmp_path / "new.csv", NEW)
    out = tmp_path / "bundle"
    summary = add_items(trained["magnet"], new_csv, out)
    assert summary["added"] == 3 and summary["replaced"] == 0 and summary["cold_items"] == 3
    b = load_bundle(out)
    plain = load_bundle(export_bundle(trained["magnet"], tmp_path / "plain"))
    assert b.n_items == N_ITEMS + 3 and list(b.item_ids[-3:]) == ["n1", "n2", "n3"]
    assert b.model_version != plain.model_version
    assert b.manifest["cold_items"] == 3 and plain.manifest["cold_items"] == 0
    assert json.loads((out / "item_cold.json").read_text()) == [False] * N_ITEMS + [True] * 3
    assert b.item_names[-3:] == ["Ocean story", "Robot war", "Quiet farm"]
    # the filter attributes carry over and the new items get theirs from their meta columns
    assert b.item_attributes[:N_ITEMS] == plain.item_attributes
    assert b.item_attributes[-3:] == [{"genres": ["Drama", "Romance"], "tags": ["t1", "t3"]},
                                      {"genres": ["Action", "Sci-Fi"], "tags": ["t2"]},
                                      {"genres": ["Drama"], "tags": ["t4", "zzz-unseen"]}]
    # the run's rows are untouched, users too
    np.testing.assert_array_equal(b.item_emb[:N_ITEMS], plain.item_emb)
    np.testing.assert_array_equal(b.item_experts[:N_ITEMS], plain.item_experts)
    np.testing.assert_array_equal(b.user_emb, plain.user_emb)
    # the new rows are the content path of the recorded encoding, additive
    model = rebuild_model(trained["magnet"], trained["data"])
    feats = encode_items(trained["data"], pd.read_csv(new_csv, dtype=str, keep_default_na=False))
    with torch.no_grad():
        want = model.content_path(feats, collaborative="ridge")
    np.testing.assert_allclose(b.item_emb[N_ITEMS:], want.item_emb.numpy(), atol=1e-6)
    recon = b.item_base + np.einsum("ie,ied->id", b.item_gates, b.item_experts)
    np.testing.assert_allclose(b.item_emb[N_ITEMS:], recon[N_ITEMS:], atol=1e-5)
    assert ((b.item_gates[N_ITEMS:] > 0).sum(1) == 2).all()
    # a new item has a collaborative part of the trained items' scale (not ~0)
    assert np.linalg.norm(b.item_base[N_ITEMS:], axis=1).mean() > 0.2 * np.linalg.norm(b.item_base[:N_ITEMS], axis=1).mean()


def test_known_ids_are_refused_unless_replace(trained: dict[str, Path], tmp_path: Path) -> None:
    rows = [("7", "Film 7 remade", "Comedy", "t1"), *NEW[:1]]
    csv = _items_csv(tmp_path / "new.csv", rows)
    with pytest.raises(AddItemsError, match="1 item ids are already in the run \\(e.g. '7'\\); pass --replace"):
        add_items(trained["magnet"], csv, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    summary = add_items(trained["magnet"], csv, tmp_path / "b", replace=True)
    assert summary["added"] == 1 and summary["replaced"] == 1 and summary["cold_items"] == 2
    b = load_bundle(tmp_path / "b")
    plain = json.loads((trained["magnet"] / "arrays" / "item_ids.json").read_text())
    row = plain.index("7")
    assert b.n_items == N_ITEMS + 1 and b.is_cold(row) and not b.is_cold(row - 1) and b.is_cold(N_ITEMS)
    assert b.item_names[row] == "Film 7 remade"
    assert b.item_attributes[row] == {"genres": ["Comedy"], "tags": ["t1"]}
    old = np.load(trained["magnet"] / "arrays" / "item_emb.npy")
    assert not np.allclose(b.item_emb[row], old[row])
    np.testing.assert_array_equal(b.item_emb[row - 1], old[row - 1])
    assert b.popularity[row] == np.bincount(np.load(trained["magnet"] / "arrays" / "train_indices.npy"),
                                            minlength=N_ITEMS)[row]


def test_explain_over_http_marks_cold_items_and_adds_up(trained: dict[str, Path], tmp_path: Path,
                                                        start_server) -> None:
    out = tmp_path / "bundle"
    add_items(trained["magnet"], _items_csv(tmp_path / "new.csv", NEW), out)
    live = start_server(bundle=str(out))
    with live.client() as client:
        user = json.loads((trained["magnet"] / "arrays" / "user_ids.json").read_text())[0]
        recs = client.get(f"/recommend/{user}", params={"k": N_ITEMS}).json()["items"]
        served = {r["item_id"]: r["score"] for r in recs}
        for item, cold in (("n1", True), ("n3", True), ("0", False)):
            body = client.get(f"/explain/{user}/{item}").json()
            assert body["cold"] is cold
            total = body["base"] + sum(e["contribution"] for e in body["experts"])
            assert total == pytest.approx(body["score"], rel=1e-4, abs=1e-6)
            if item in served:
                assert body["score"] == pytest.approx(served[item], rel=1e-5)
        assert "n1" in served or "n2" in served or "n3" in served  # new items are ranked like any other
        # a filter matches the new items' attributes (only n3 carries this tag)
        only = client.post(f"/recommend/{user}", json={"k": 5, "filter": {"tags": "zzz-unseen"}})
        assert only.status_code == 200 and [r["item_id"] for r in only.json()["items"]] == ["n3"]
        schema = client.get("/openapi.json").json()["components"]["schemas"]["Explanation"]
        assert "cold" in schema["required"]


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "offline", "add-items", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_adds_items(trained: dict[str, Path], tmp_path: Path) -> None:
    proc = _cli("--run", trained["magnet"], "--items", _items_csv(tmp_path / "new.csv", NEW), "--out", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    assert "3 items added, 0 replaced, 63 items (3 from content alone)" in proc.stdout
    assert load_bundle(tmp_path / "b").manifest["cold_items"] == 3


def _old_import(trained: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the run whose dataset has no recorded encoders (an import from before them)."""
    data = tmp_path / "old-data"
    shutil.copytree(trained["data"], data)
    shutil.rmtree(data / ENCODERS_DIR)
    run = tmp_path / "old-run"
    shutil.copytree(trained["magnet"], run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "data_dir": str(data)}))
    return run


@pytest.mark.parametrize("case, message", [
    (lambda t, p: ("magnet", _items_csv(p / "x.csv", [r[:3] for r in NEW], "item_id,title,genres")),
     "x.csv: missing content column(s) tags recorded at import"),
    (lambda t, p: ("magnet", _items_csv(p / "x.csv", [*NEW, ("n4", "nan", "", "t1")])),
     "x.csv: 1 items have no text content (columns title, genres are all empty or NaN), e.g. item 'n4' on line 5"),
    (lambda t, p: ("magnet", _items_csv(p / "x.csv", [*NEW, ("n5", "Some film", "N/A", "")])),
     "x.csv: 1 items have no meta content (columns genres, tags are all empty or NaN), e.g. item 'n5' on line 5"),
    (lambda t, p: ("magnet", _items_csv(p / "x.csv", [*NEW, NEW[1]])),
     "x.csv: column item_id has 1 duplicate ids (e.g. 'n2')"),
    (lambda t, p: ("lightgcn", _items_csv(p / "x.csv", NEW)),
     "is a lightgcn run: only MAGNET has a content path"),
    (lambda t, p: (_old_import(t, p), _items_csv(p / "x.csv", NEW)),
     "has no recorded item encoders (encoders/encoders.json)"),
    (lambda t, p: ("magnet", p / "nope.csv"), "items file"),
], ids=["missing-column", "empty-text", "empty-meta", "duplicate-ids", "lightgcn", "old-import", "no-file"])
def test_cli_bad_input_one_line_no_bundle(trained: dict[str, Path], tmp_path: Path, case, message) -> None:
    run, csv = case(trained, tmp_path)
    run = trained[run] if isinstance(run, str) else run
    out = tmp_path / "bundle"
    proc = _cli("--run", run, "--items", csv, "--out", out)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and message in err, err
    assert not out.exists() and not list(tmp_path.glob(".bundle.tmp-*"))


def test_cli_refuses_a_bad_collaborative_and_a_non_bundle_out(trained: dict[str, Path], tmp_path: Path) -> None:
    csv = _items_csv(tmp_path / "new.csv", NEW)
    proc = _cli("--run", trained["magnet"], "--items", csv, "--out", tmp_path / "b", "--collaborative", "magic")
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        "error: --collaborative must be one of graph, knn, ridge, learned, got 'magic'"]
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    proc = _cli("--run", trained["magnet"], "--items", csv, "--out", keep)
    assert proc.returncode != 0 and "is a non-empty directory that is not a bundle" in proc.stderr
    assert (keep / "notes.txt").read_text() == "mine" and not (tmp_path / "b").exists()
    proc = _cli("--run", trained["magnet"], "--items", csv, "--out", tmp_path / "b", "--collaborative", "learned")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("error: --collaborative learned needs a model trained with magnet.cold_dropout > 0")
    assert not (tmp_path / "b").exists()
