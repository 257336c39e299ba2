"""Display names travel import -> dataset dir -> RUN/arrays -> bundle -> loader, and a
bad names file is refused with its name at every step (service.item_files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from offline.config import load_config
from offline.dataset import DatasetError, load_dataset
from offline.export import ExportError, export_bundle
from offline.importer import import_dataset
from offline.synthetic import SyntheticSpec, generate
from offline.train import TrainError, train
from offline.synthetic import make_run
from service.bundle import BundleError, load_bundle
from service.bundle_format import sha256_file
from service.item_files import ITEM_NAMES

# 4 users x 3 items each, so nothing is dropped by the split (>= 3 rows per user)
INTERACTIONS = "user_id,item_id,timestamp\n" + "".join(
    f"{u},{i},{10 * u + n}\n" for u in (1, 2, 3, 4) for n, i in enumerate((30, 10, 20)))


def _files(tmp_path: Path, items: str) -> tuple[Path, Path]:
    inter = tmp_path / "inter.csv"
    inter.write_text(INTERACTIONS)
    (tmp_path / "items.csv").write_text(items)
    return inter, tmp_path / "items.csv"


def _import(tmp_path: Path, items: str, **kw) -> tuple[Path, object]:
    inter, items_csv = _files(tmp_path, items)
    out = tmp_path / "data"
    ds = import_dataset(inter, items_csv, kcore=0, name="t", out=out, **kw)
    return out, ds


def test_import_writes_titles_in_item_order_with_blank_as_null(tmp_path):
    out, ds = _import(tmp_path, "item_id,genre,Title\n20,b,  Twenty \n10,a,Ten\n30,c,\n")
    assert ds.item_ids == ["10", "20", "30"]  # numbered in the order of the external ids
    assert json.loads((out / ITEM_NAMES).read_text(encoding="utf-8")) == ["Ten", "Twenty", None]


def test_import_takes_a_name_column_or_the_one_given(tmp_path):
    out, _ = _import(tmp_path, "item_id,name\n10,a\n20,b\n30,c\n")
    assert json.loads((out / ITEM_NAMES).read_text()) == ["a", "b", "c"]
    out, _ = _import(tmp_path, "item_id,title,label\n10,t1,Größe\n20,t2,b\n30,t3,c\n", title_col="label")
    assert json.loads((out / ITEM_NAMES).read_text(encoding="utf-8")) == ["Größe", "b", "c"]


def test_import_without_a_title_column_writes_no_names(tmp_path):
    out, _ = _import(tmp_path, "item_id,genre\n10,a\n20,b\n30,c\n")
    assert not (out / ITEM_NAMES).exists()
    assert load_dataset(out).n_items == 3


def test_import_refuses_a_missing_title_column_and_a_title_column_without_items(tmp_path):
    with pytest.raises(DatasetError, match="missing column.*headline"):
        _import(tmp_path, "item_id,title\n10,a\n20,b\n30,c\n", title_col="headline")
    inter, _ = _files(tmp_path, "item_id\n10\n")
    with pytest.raises(DatasetError, match="--title-col title needs an --items file"):
        import_dataset(inter, None, kcore=0, name="t", out=tmp_path / "d2", title_col="title")
    assert not (tmp_path / "data").exists() and not (tmp_path / "d2").exists()


def test_reimport_replaces_a_dataset_directory_that_holds_names(tmp_path):
    out, _ = _import(tmp_path, "item_id,title\n10,a\n20,b\n30,c\n")
    out, _ = _import(tmp_path, "item_id,title\n10,x\n20,y\n30,z\n")  # not refused as "not a dataset dir"
    assert json.loads((out / ITEM_NAMES).read_text()) == ["x", "y", "z"]


def test_training_carries_names_into_the_run_and_export_into_the_bundle(tmp_path):
    data, _ = _import(tmp_path, "item_id,title\n10,Ten\n20,Twenty\n30,\n")
    run = tmp_path / "run"
    train(data, run, load_config(None, None, model="popularity", seed=0))
    assert json.loads((run / "arrays" / ITEM_NAMES).read_text()) == ["Ten", "Twenty", None]
    bundle_dir = export_bundle(run, tmp_path / "bundle")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert ITEM_NAMES in manifest["files"]  # checksummed like every other file
    assert load_bundle(bundle_dir).item_names == ["Ten", "Twenty", None]


def test_training_refuses_a_names_file_of_the_wrong_length_before_training(tmp_path):
    data, _ = _import(tmp_path, "item_id,title\n10,a\n20,b\n30,c\n")
    (data / ITEM_NAMES).write_text(json.dumps(["a", "b"]))
    with pytest.raises(TrainError, match=r"item_names.json: 2 entries, expected 3"):
        train(data, tmp_path / "run", load_config(None, None, model="popularity", seed=0))
    assert not (tmp_path / "run").exists()


def test_export_refuses_bad_names_in_the_run(tmp_path):
    run = make_run(tmp_path / "run", n_users=5, n_items=8, item_names=[f"n{i}" for i in range(8)])
    (run.path / "arrays" / ITEM_NAMES).write_text(json.dumps(["n"] * 7 + [3]))
    with pytest.raises(ExportError, match=r"item_names.json: entry 7 is 3; each entry must be a string or null"):
        export_bundle(run.path, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_loader_refuses_a_names_file_that_fails_its_checksum_or_its_shape(tmp_path):
    names = [f"item {i}" for i in range(8)]
    run = make_run(tmp_path / "run", n_users=5, n_items=8, item_names=names)
    bundle_dir = export_bundle(run.path, tmp_path / "bundle")
    assert load_bundle(bundle_dir).item_names == names
    path = bundle_dir / ITEM_NAMES
    path.write_text(json.dumps(names[:-1] + ["changed"]))
    with pytest.raises(BundleError, match="item_names.json: checksum mismatch"):
        load_bundle(bundle_dir)
    # a short list with a matching checksum is still refused, by its shape
    path.write_text(json.dumps(names[:-1]))
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["files"][ITEM_NAMES] = sha256_file(path)
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="item_names.json: 7 entries, expected 8"):
        load_bundle(bundle_dir)


def test_a_bundle_without_names_loads_with_none(bundle_dir):
    assert load_bundle(bundle_dir).item_names is None


def test_synthetic_names_show_the_planted_topic_and_modality():
    synth = generate(SyntheticSpec(n_users=30, n_items=40, seed=3))
    again = generate(SyntheticSpec(n_users=30, n_items=40, seed=3))
    assert synth.item_names == again.item_names and len(synth.item_names) == 40
    assert len(set(synth.item_names)) == 40  # "#<index>" keeps them unique
    for i, name in enumerate(synth.item_names):
        kind = synth.modalities[synth.planted_modality[i]]
        words = {"text": ("guide", "essay", "handbook"), "image": ("photo book", "poster", "art print")}[kind]
        assert any(w in name for w in words), (name, kind)
    by_topic = {}
    for i, name in enumerate(synth.item_names):
        by_topic.setdefault(int(synth.item_topic[i]), set()).add(name.split(" ")[0])
    assert all(len(first_words) == 1 for first_words in by_topic.values())  # one theme word per topic
    assert np.unique([next(iter(v)) for v in by_topic.values()]).size == len(by_topic)
