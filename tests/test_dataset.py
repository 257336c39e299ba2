"""Dataset directory: round trip, atomic replace, and every malformed input named clearly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offline import dataset as dataset_mod
from offline.dataset import Dataset, DatasetError, load_dataset, looks_like_dataset_dir, write_dataset


def small_dataset(name: str = "toy") -> Dataset:
    """3 users x 4 items; every split non-empty; external ids differ from internal ones."""
    return Dataset(
        name=name,
        n_users=3,
        n_items=4,
        train=np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 3]], dtype=np.int64),
        valid=np.array([[0, 2], [1, 3]], dtype=np.int64),
        test=np.array([[0, 3], [2, 0]], dtype=np.int64),
        features={
            "image": np.arange(4 * 5, dtype=np.float32).reshape(4, 5),
            "text": np.linspace(-1, 1, 4 * 3, dtype=np.float32).reshape(4, 3),
        },
        user_ids=["u10", "u2", "u7"],
        item_ids=["i9", "i1", "i5", "i3"],
    )


@pytest.fixture
def ds_dir(tmp_path: Path) -> Path:
    out = tmp_path / "toy"
    write_dataset(small_dataset(), out)
    return out


def _rewrite_inter(ds_dir: Path, text: str) -> None:
    (ds_dir / "toy.inter").write_text(text)


# ------------------------------------------------------------------ round trip


def test_round_trip_keeps_everything(ds_dir: Path) -> None:
    original = small_dataset()
    ds = load_dataset(ds_dir)
    assert ds.name == "toy"
    assert (ds.n_users, ds.n_items) == (3, 4)
    for split in ("train", "valid", "test"):
        got = sorted(map(tuple, getattr(ds, split).tolist()))
        assert got == sorted(map(tuple, getattr(original, split).tolist())), split
        assert getattr(ds, split).dtype == np.int64
    assert list(ds.features) == ["image", "text"]
    for m in ds.features:
        assert ds.features[m].dtype == np.float32
        np.testing.assert_array_equal(ds.features[m], original.features[m])
    assert ds.user_ids == ["u10", "u2", "u7"]
    assert ds.item_ids == ["i9", "i1", "i5", "i3"]
    assert sorted(p.name for p in ds_dir.iterdir()) == [
        "i_id_mapping.csv", "image_feat.npy", "stats.json", "text_feat.npy", "toy.inter", "u_id_mapping.csv",
    ]
    assert (ds_dir / "u_id_mapping.csv").read_text().splitlines()[:2] == ["user_id\tuserID", "u10\t0"]
    stats = json.loads((ds_dir / "stats.json").read_text())
    assert stats["split"] == [5, 2, 2] and stats["image_feat"] == [4, 5]


def test_extra_columns_are_written_in_user_time_order(tmp_path: Path) -> None:
    ds = small_dataset()
    pairs = np.concatenate([ds.train, ds.valid, ds.test])
    extra = pd.DataFrame({"userID": pairs[:, 0], "itemID": pairs[:, 1],
                          "rating": np.arange(len(pairs)) % 5 + 1, "timestamp": 1000 - np.arange(len(pairs))})
    write_dataset(ds, tmp_path / "d", extra=extra, stats={"note": 1})
    inter = pd.read_csv(tmp_path / "d" / "toy.inter", sep="\t")
    assert list(inter.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    # user 0 has items 0,1 (train, ts 1000, 999), 2 (valid, 995), 3 (test, 993): reversed by time
    u0 = inter[inter.userID == 0]
    assert u0.itemID.tolist() == [3, 2, 1, 0]
    assert u0.x_label.tolist() == [2, 1, 0, 0]
    assert json.loads((tmp_path / "d" / "stats.json").read_text())["note"] == 1
    assert len(load_dataset(tmp_path / "d").train) == 5


def test_train_matrix_and_popularity() -> None:
    ds = small_dataset()
    m = ds.train_matrix()
    assert m.shape == (3, 4)
    np.testing.assert_array_equal(
        m.toarray(), [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]]
    )
    np.testing.assert_array_equal(ds.item_popularity(), [1, 2, 1, 1])
    assert ds.summary()["interactions"] == 9
    assert ds.summary()["density"] == pytest.approx(9 / 12)


def test_mmrec_layout_without_mappings_loads_unchanged(tmp_path: Path) -> None:
    d = tmp_path / "baby"
    d.mkdir()
    (d / "baby.inter").write_text(
        "userID\titemID\trating\ttimestamp\tx_label\n"
        "0\t0\t5.0\t1300000000\t0\n0\t1\t4.0\t1300000001\t1\n1\t2\t3.0\t1300000002\t2\n1\t1\t5.0\t1300000003\t0\n"
    )
    np.save(d / "image_feat.npy", np.ones((3, 4096), dtype=np.float32))
    np.save(d / "text_feat.npy", np.ones((3, 384), dtype=np.float64))  # float64 is cast
    ds = load_dataset(d)
    assert ds.name == "baby" and (ds.n_users, ds.n_items) == (2, 3)
    assert ds.user_ids == ["0", "1"] and ds.item_ids == ["0", "1", "2"]
    assert {m: f.shape for m, f in ds.features.items()} == {"image": (3, 4096), "text": (3, 384)}
    assert ds.features["text"].dtype == np.float32
    assert ds.train.tolist() == [[0, 0], [1, 1]]


def test_shared_ml100k_mmrec_loads() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml100k" / "mmrec"
    if not shared.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{shared} is missing: CI must have ../shared beside the checkout")
        pytest.skip(f"{shared} is missing (../shared is not beside the checkout)")
    ds = load_dataset(shared)
    assert (ds.n_users, ds.n_items) == (943, 1349)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (79790, 9531, 9966)
    assert ds.features["text"].shape == (1349, 384) and ds.features["meta"].shape == (1349, 128)


# ------------------------------------------------------------------ writing safely


def test_write_replaces_an_existing_dataset_dir(ds_dir: Path) -> None:
    ds = small_dataset()
    ds.features = {"meta": np.zeros((4, 2), dtype=np.float32)}
    write_dataset(ds, ds_dir)
    assert sorted(load_dataset(ds_dir).features) == ["meta"]
    assert not (ds_dir / "image_feat.npy").exists()
    assert [p.name for p in ds_dir.parent.iterdir()] == ["toy"]  # no temp or backup left


def test_write_refuses_a_directory_that_is_not_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(DatasetError, match="refusing to replace .*home"):
        write_dataset(small_dataset(), out)
    assert (out / "notes.txt").read_text() == "precious"
    file_out = tmp_path / "file"
    file_out.write_text("x")
    with pytest.raises(DatasetError, match="it is a file"):
        write_dataset(small_dataset(), file_out)


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dataset_mod, "_write_mapping", boom)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(small_dataset(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failed_replace_keeps_the_old_dataset(ds_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dataset_mod, "_write_mapping", boom)
    with pytest.raises(OSError):
        write_dataset(small_dataset(), ds_dir)
    assert len(load_dataset(ds_dir).train) == 5
    assert [p.name for p in ds_dir.parent.iterdir()] == ["toy"]


def test_looks_like_dataset_dir(tmp_path: Path, ds_dir: Path) -> None:
    assert looks_like_dataset_dir(ds_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert looks_like_dataset_dir(empty)
    (ds_dir / "sub").mkdir()
    assert not looks_like_dataset_dir(ds_dir)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda ds: setattr(ds, "name", "../evil"), "not usable as a file name"),
        (lambda ds: setattr(ds, "valid", np.zeros((0, 2), np.int64)), "the valid split is empty"),
        (lambda ds: setattr(ds, "item_ids", ["a", "b", "c"]), "item_ids has 3 entries for 4 ids"),
        (lambda ds: setattr(ds, "user_ids", ["a", "a", "b"]), "duplicate external ids"),
        (lambda ds: setattr(ds, "train", np.array([[0, 4]])), "item ids in 4..4, outside 0..3"),
        (lambda ds: ds.features.update(text=np.ones((3, 2), np.float32)), "has 3 rows but the dataset has 4 items"),
        (lambda ds: ds.features.update(text=np.full((4, 2), np.nan, np.float32)), "4 of 4 rows contain NaN"),
        (lambda ds: setattr(ds, "user_ids", ["a\tb", "c", "d"]), "must not contain tabs"),
    ],
)
def test_write_rejects_an_invalid_dataset(tmp_path: Path, mutate, message: str) -> None:
    ds = small_dataset()
    mutate(ds)
    with pytest.raises(DatasetError, match=message):
        write_dataset(ds, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ loading bad input


def test_missing_and_wrong_paths(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(DatasetError, match="is not a directory"):
        load_dataset(tmp_path / "f")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no <name>.inter file"):
        load_dataset(tmp_path / "empty")


def test_two_inter_files(ds_dir: Path) -> None:
    (ds_dir / "other.inter").write_text((ds_dir / "toy.inter").read_text())
    with pytest.raises(DatasetError, match="2 .inter files \\(other.inter, toy.inter\\); expected exactly one"):
        load_dataset(ds_dir)


GOOD = "userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n1\t2\t2\n2\t3\t0\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("userID,itemID,x_label\n0,0,0\n", "toy.inter: expected tab-separated columns, but the header is comma-separated"),
        ("userID\titemID\n0\t0\n", "toy.inter: missing column\\(s\\) x_label \\(found userID, itemID"),
        ("", "toy.inter: empty file"),
        (GOOD.replace("1\t2\t2", "x\t2\t2"), "column userID must hold integers; 1 rows do not \\(e.g. 'x' on line 4\\)"),
        (GOOD.replace("0\t1\t1", "0\t1.5\t1"), "column itemID must hold integers.*'1.5' on line 3"),
        (GOOD.replace("0\t1\t1", "0\t\t1"), "column itemID must hold integers.*'' on line 3"),
        (GOOD.replace("1\t2\t2", "1\t2\t3"), "x_label must be 0 \\(train\\), 1 \\(valid\\) or 2 \\(test\\); 1 rows are not"),
        (GOOD.replace("1\t2\t2", "1\t2\t1"), "toy.inter: the test split is empty"),
        (GOOD.replace("1\t2\t2", "-1\t2\t2"), "userID must be dense from 0, found -1"),
        (GOOD.replace("2\t3\t0", "2\t7\t0"), "itemID 7 is out of range: i_id_mapping.csv maps only 0..3"),
    ],
)
def test_bad_inter_file(ds_dir: Path, text: str, message: str) -> None:
    _rewrite_inter(ds_dir, text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(ds_dir)


def test_ids_must_be_dense_without_mappings(ds_dir: Path) -> None:
    (ds_dir / "u_id_mapping.csv").unlink()
    _rewrite_inter(ds_dir, GOOD.replace("2\t3\t0", "5\t3\t0"))
    with pytest.raises(DatasetError, match="userID is not dense from 0: 3 of the ids 0..5 never occur \\(e.g. 2\\)"):
        load_dataset(ds_dir)


@pytest.mark.parametrize(
    "text, message",
    [
        ("item_id,itemID\ni9,0\n", "i_id_mapping.csv: expected tab-separated columns, but the header is comma-separated"),
        ("item_id\titemID\ni9\t0\ni1\t0\ni5\t2\ni3\t3\n", "internal ids \\(2nd column\\) must be 0..3, each exactly once"),
        ("item_id\titemID\ni9\t0\ni9\t1\ni5\t2\ni3\t3\n", "external ids \\(1st column\\) are not unique"),
        ("item_id\titemID\ti\ni9\t0\tx\n", "expected 2 tab-separated columns"),
    ],
)
def test_bad_mapping_file(ds_dir: Path, text: str, message: str) -> None:
    (ds_dir / "i_id_mapping.csv").write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(ds_dir)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.ones(4, np.float32), "text_feat.npy: expected a 2-D array \\[n_items, d\\], got shape \\[4\\]"),
        (np.ones((5, 3), np.float32), "text_feat.npy: has 5 rows but the dataset has 4 items"),
        (np.ones((4, 3), np.int64), "text_feat.npy: expected float32 values, got int64"),
        (np.array([[1, np.nan], [0, 0], [np.inf, 1], [2, 2]], np.float32), "text_feat.npy: 2 of 4 rows contain NaN or inf \\(e.g. row 0\\)"),
        (np.array([[1e39, 0]] * 4), "4 of 4 rows contain NaN or inf"),  # float64 overflowing float32
        (np.array([["a"]] * 4, dtype=object), "text_feat.npy: cannot read as a .npy array"),
    ],
)
def test_bad_feature_file(ds_dir: Path, array: np.ndarray, message: str) -> None:
    np.save(ds_dir / "text_feat.npy", array, allow_pickle=True)
    with pytest.raises(DatasetError, match=message):
        load_dataset(ds_dir)


def test_float64_features_are_cast(ds_dir: Path) -> None:
    np.save(ds_dir / "text_feat.npy", np.full((4, 3), 0.5, dtype=np.float64))
    feat = load_dataset(ds_dir).features["text"]
    assert feat.dtype == np.float32 and float(feat.sum()) == 6.0


def test_error_is_a_value_error_with_one_line(ds_dir: Path) -> None:
    np.save(ds_dir / "text_feat.npy", np.ones((2, 3), np.float32))
    with pytest.raises(ValueError) as info:
        load_dataset(ds_dir)
    assert isinstance(info.value, DatasetError)
    assert "\n" not in str(info.value) and str(ds_dir / "text_feat.npy") in str(info.value)
