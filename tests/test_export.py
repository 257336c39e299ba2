"""`magnet export`: run directory -> bundle, and the loader's refusal of bad bundles."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from run_fixture import brute_force_topk, flip_byte

from offline.export import ExportError, export_bundle
from offline.synthetic import make_run
from service.bundle import BundleError, load_bundle
from service.bundle_format import BUNDLE_FILES
from service.search import ItemSearcher

MANIFEST_KEYS = {"format_version", "model_version", "created_at", "model", "dim", "n_users", "n_items",
                 "experts", "metrics", "files", "index"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bundle_contents(fake_run, bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert MANIFEST_KEYS <= set(manifest)
    assert manifest["format_version"] == 1
    assert manifest["model"] == "magnet"
    assert (manifest["n_users"], manifest["n_items"], manifest["dim"]) == (60, 300, 16)
    assert manifest["experts"] == fake_run.experts
    assert manifest["metrics"]["test"]["recall@20"] == 0.15
    assert manifest["index"]["type"] == "flat" and manifest["index"]["exact"] is True
    assert set(manifest["files"]) == set(BUNDLE_FILES)
    for name, digest in manifest["files"].items():
        assert _sha(bundle_dir / name) == digest, name
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted([*BUNDLE_FILES, "manifest.json"])

    # arrays survive unchanged; seen CSR is the training CSR; popularity counts training rows
    np.testing.assert_array_equal(np.load(bundle_dir / "item_emb.npy"), fake_run.item_emb)
    np.testing.assert_array_equal(np.load(bundle_dir / "seen_indptr.npy"), fake_run.train_indptr)
    np.testing.assert_array_equal(np.load(bundle_dir / "seen_indices.npy"), fake_run.train_indices)
    np.testing.assert_array_equal(np.load(bundle_dir / "popularity.npy"),
                                  np.bincount(fake_run.train_indices, minlength=300))
    assert json.loads((bundle_dir / "user_ids.json").read_text()) == fake_run.user_ids
    assert json.loads((bundle_dir / "item_ids.json").read_text()) == fake_run.item_ids


def test_loaded_bundle_matches_brute_force(fake_run, bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.model_version == json.loads((bundle_dir / "manifest.json").read_text())["model_version"]
    searcher = ItemSearcher(bundle)
    users = list(range(fake_run.user_emb.shape[0]))
    for u, (ids, scores) in zip(users, searcher.recommend(users, 20)):
        ref, ref_scores = brute_force_topk(fake_run, u, 20)
        assert ids.tolist() == ref
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-12)


def test_model_version_unique_per_export(fake_run, tmp_path):
    a = export_bundle(fake_run.path, tmp_path / "a")
    b = export_bundle(fake_run.path, tmp_path / "b")
    va = json.loads((a / "manifest.json").read_text())["model_version"]
    vb = json.loads((b / "manifest.json").read_text())["model_version"]
    assert va != vb and va.startswith("magnet-")


def test_reexport_replaces_bundle_atomically(fake_run, tmp_path):
    out = export_bundle(fake_run.path, tmp_path / "bundle")
    first = json.loads((out / "manifest.json").read_text())["model_version"]
    export_bundle(fake_run.path, out)
    assert json.loads((out / "manifest.json").read_text())["model_version"] != first
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temp or backup dirs left


@pytest.mark.parametrize("n_experts,dim", [(0, 16), (0, 1)], ids=["lightgcn", "popularity"])
def test_zero_experts(tmp_path, n_experts, dim):
    run = make_run(tmp_path / "run", n_experts=n_experts, dim=dim, model="lightgcn")
    out = export_bundle(run.path, tmp_path / "bundle")
    bundle = load_bundle(out)
    assert bundle.item_gates.shape == (300, 0) and bundle.item_experts.shape == (300, 0, dim)
    assert bundle.experts == ()
    ids, _ = ItemSearcher(bundle).recommend([0], 10)[0]
    assert ids.tolist() == brute_force_topk(run, 0, 10)[0]


def test_approximate_index(tmp_path):
    run = make_run(tmp_path / "run", n_items=400, seed=3)
    out = export_bundle(run.path, tmp_path / "bundle", exact_max_items=50)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["index"]["type"] == "hnsw" and manifest["index"]["factory"] == "HNSW32,Flat"
    assert manifest["index"]["exact"] is False
    bundle = load_bundle(out)
    searcher = ItemSearcher(bundle)
    overlap = []
    for u in range(20):
        ids, scores = searcher.recommend([u], 10)[0]
        assert len(ids) == 10 and len(set(ids.tolist())) == 10
        assert not set(ids.tolist()) & set(run.seen(u).tolist())
        assert np.all(np.diff(scores) <= 0)
        np.testing.assert_allclose(scores, run.item_emb[ids].astype(np.float64) @ run.user_emb[u], rtol=1e-6)
        overlap.append(len(set(ids.tolist()) & set(brute_force_topk(run, u, 10)[0])) / 10)
    assert np.mean(overlap) >= 0.9


# ------------------------------------------------------------------ refusals


def test_missing_file_named(tmp_path):
    run = make_run(tmp_path / "run")
    (run.path / "arrays" / "item_gates.npy").unlink()
    with pytest.raises(ExportError, match="item_gates.npy"):
        export_bundle(run.path, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_missing_metrics_named(tmp_path):
    run = make_run(tmp_path / "run")
    (run.path / "metrics.json").unlink()
    with pytest.raises(ExportError, match="metrics.json"):
        export_bundle(run.path, tmp_path / "bundle")


def test_not_a_run(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export_bundle(tmp_path / "nope", tmp_path / "bundle")


@pytest.mark.parametrize(
    "name,bad,match",
    [
        ("item_base.npy", np.zeros((300, 8), np.float32), "item_base.npy"),
        ("item_experts.npy", np.zeros((300, 3, 16), np.float32), "item_experts.npy"),
        ("user_emb.npy", np.full((60, 16), np.nan, np.float32), "NaN"),
        ("train_indptr.npy", np.arange(10), "train_indptr.npy"),
        ("item_emb.npy", np.zeros((300, 16), np.float32), "item_emb.npy"),  # breaks base + gates . experts
    ],
)
def test_bad_array_named(tmp_path, name, bad, match):
    run = make_run(tmp_path / "run")
    np.save(run.path / "arrays" / name, bad)
    with pytest.raises(ExportError, match=match):
        export_bundle(run.path, tmp_path / "bundle")


def test_pickled_array_refused(tmp_path):
    run = make_run(tmp_path / "run")
    np.save(run.path / "arrays" / "user_emb.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ExportError, match="user_emb.npy"):
        export_bundle(run.path, tmp_path / "bundle")


def test_bad_ids_and_experts(tmp_path):
    run = make_run(tmp_path / "run")
    ids = run.path / "arrays" / "item_ids.json"
    ids.write_text(json.dumps(run.item_ids[:-1]))
    with pytest.raises(ExportError, match="item_ids.json"):
        export_bundle(run.path, tmp_path / "bundle")
    ids.write_text(json.dumps(run.item_ids))
    (run.path / "arrays" / "experts.json").write_text(json.dumps(run.experts[:3]))
    with pytest.raises(ExportError, match="experts.json"):
        export_bundle(run.path, tmp_path / "bundle")


def test_refuses_to_overwrite_foreign_directory(fake_run, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="refusing"):
        export_bundle(fake_run.path, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_loader_refuses_corruption(bundle_copy):
    flip_byte(bundle_copy / "item_emb.npy")
    with pytest.raises(BundleError, match="item_emb.npy.*checksum"):
        load_bundle(bundle_copy)


def test_loader_refuses_missing_and_tampered(bundle_copy):
    manifest_path = bundle_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    (bundle_copy / "popularity.npy").unlink()
    with pytest.raises(BundleError, match="popularity.npy"):
        load_bundle(bundle_copy)
    # A consistent checksum over a wrong shape is still refused, naming the file.
    np.save(bundle_copy / "popularity.npy", np.zeros(299, np.int64))
    manifest["files"]["popularity.npy"] = _sha(bundle_copy / "popularity.npy")
    manifest["shapes"].pop("popularity.npy")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="popularity.npy.*shape"):
        load_bundle(bundle_copy)
    manifest_path.unlink()
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(bundle_copy)


def test_export_publishes_only_what_the_loader_accepts(fake_run, tmp_path, monkeypatch):
    """The written bundle is loaded with the service's loader before it is put in
    place; a refusal leaves the previous bundle serving and nothing half-written."""
    import offline.export as export_mod

    out = tmp_path / "bundle"
    export_bundle(fake_run.path, out)
    before = json.loads((out / "manifest.json").read_text())["model_version"]
    checked = []

    def refuse(path):
        checked.append(Path(path))
        assert (Path(path) / "manifest.json").is_file()  # the complete staged bundle, not `out`
        raise BundleError(f"{Path(path) / 'items.faiss'}: injected refusal")

    monkeypatch.setattr(export_mod, "load_bundle", refuse)
    with pytest.raises(ExportError, match="loader.*items.faiss"):
        export_bundle(fake_run.path, out)
    assert len(checked) == 1 and checked[0] != out and checked[0].parent == out.parent
    assert load_bundle(out).model_version == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_bundle_format_and_loader_import_without_torch():
    """The format module is shared with the serving side, which never needs torch."""
    import subprocess
    import sys

    code = ("import sys, service.bundle_format, service.bundle, service.app; "
            "bad = sorted(m for m in ('torch', 'model', 'offline') if m in sys.modules); "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
