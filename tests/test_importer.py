"""`magnet import` on small hand-made CSVs: order of work, split rule, features, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offline.dataset import Dataset, DatasetError, load_dataset
from offline.features import encode_meta, encode_text, item_meta_tokens, item_text, split_multi
from offline.importer import assign_split, import_dataset, kcore_filter


def _csv(path: Path, header: str, rows: list[tuple]) -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def _triples(ds: Dataset) -> set[tuple[str, str, int]]:
    out = set()
    for label, pairs in enumerate((ds.train, ds.valid, ds.test)):
        out |= {(ds.user_ids[u], ds.item_ids[i], label) for u, i in pairs.tolist()}
    return out


def _inter(out: Path, name: str = "t") -> pd.DataFrame:
    return pd.read_csv(out / f"{name}.inter", sep="\t")


def _import(tmp_path: Path, inter: Path, **kw) -> Dataset:
    kw.setdefault("kcore", 0)
    return import_dataset(inter, kw.pop("items", None), name=kw.pop("name", "t"), out=tmp_path / "out", **kw)


# ------------------------------------------------------------------ the split rule, by hand

SPLIT_ROWS = (
    # user 1: 5 rows (< 10): last-but-one valid, last test
    [(1, i, 10 * i) for i in range(1, 6)]
    # user 2: 13 rows: floor(2.6) = 2 held out -> 1 valid, 1 test
    + [(2, i, 100 + i) for i in range(1, 14)]
    # user 3: 20 rows in reverse time: 4 held out -> 2 valid, 2 test (the latest: items 2, 1)
    + [(3, i, 1000 - i) for i in range(1, 21)]
    # user 4: 3 rows, items 10 and 9 tie at t=7 -> integer order 9 then 10
    + [(4, 10, 7), (4, 5, 1), (4, 9, 7)]
    # user 5: 2 rows -> dropped
    + [(5, 1, 1), (5, 2, 2)]
    # user 10: 19 rows: floor(3.8) = 3 held out -> 1 valid, 2 test
    + [(10, i, i) for i in range(1, 20)]
)


def _expected_split() -> set[tuple[str, str, int]]:
    exp = set()
    exp |= {("1", str(i), 0) for i in (1, 2, 3)} | {("1", "4", 1), ("1", "5", 2)}
    exp |= {("2", str(i), 0) for i in range(1, 12)} | {("2", "12", 1), ("2", "13", 2)}
    exp |= {("3", str(i), 0) for i in range(5, 21)} | {("3", "4", 1), ("3", "3", 1), ("3", "2", 2), ("3", "1", 2)}
    exp |= {("4", "5", 0), ("4", "9", 1), ("4", "10", 2)}
    exp |= {("10", str(i), 0) for i in range(1, 17)} | {("10", "17", 1), ("10", "18", 2), ("10", "19", 2)}
    return exp


def test_split_rule_on_a_hand_computed_case(tmp_path: Path) -> None:
    inter = _csv(tmp_path / "i.csv", "user_id,item_id,rating,timestamp", [(u, i, 3, t) for u, i, t in SPLIT_ROWS])
    ds = _import(tmp_path, inter)
    assert _triples(ds) == _expected_split()
    # numbered in integer order of external ids; user 5 (2 rows) is gone
    assert ds.user_ids == ["1", "2", "3", "4", "10"]
    assert ds.item_ids == [str(i) for i in range(1, 21)]
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (3 + 11 + 16 + 1 + 16, 1 + 1 + 2 + 1 + 1, 1 + 1 + 2 + 1 + 2)
    # the file on disk says the same, per user in time order
    df = _inter(tmp_path / "out")
    assert list(df.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    u4 = df[df.userID == 3]
    assert u4.itemID.tolist() == [4, 8, 9] and u4.x_label.tolist() == [0, 1, 2]
    assert load_dataset(tmp_path / "out").item_ids == ds.item_ids


def test_ties_compare_as_strings_when_an_item_id_is_not_an_integer(tmp_path: Path) -> None:
    rows = [("a", "5", 1), ("a", "10", 7), ("a", "9", 7), ("a", "z", 0)]
    inter = _csv(tmp_path / "i.csv", "user_id,item_id,timestamp", rows)
    ds = _import(tmp_path, inter)
    # order z(0), 5(1), then the tie at 7 as strings: "10" < "9"
    assert _triples(ds) == {("a", "z", 0), ("a", "5", 0), ("a", "10", 1), ("a", "9", 2)}
    assert ds.item_ids == ["10", "5", "9", "z"]


def test_assign_split_on_integer_columns() -> None:
    frame = pd.DataFrame({
        "user": [7] * 10 + [8, 8],
        "item": [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1, 2],
        "timestamp": [0] * 10 + [5, 6],
    })
    labels = assign_split(frame, user_col="user", item_col="item")
    # all ten tie on time: integer item order 1..10; 2 held out -> item 9 valid, 10 test
    assert labels.tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 0, -1, -1]


# ------------------------------------------------------------------ order of work


def test_duplicates_keep_the_earliest_row(tmp_path: Path) -> None:
    rows = [(1, 1, 1, 300), (1, 2, 4, 200), (1, 1, 5, 100), (1, 3, 4, 400)]
    inter = _csv(tmp_path / "i.csv", "user_id,item_id,rating,timestamp", rows)
    ds = _import(tmp_path, inter)
    # kept (1, 1) at t=100 -> order 1, 2, 3 (with the t=300 copy it would be 2, 1, 3)
    assert _triples(ds) == {("1", "1", 0), ("1", "2", 1), ("1", "3", 2)}
    row = _inter(tmp_path / "out").query("itemID == 0")
    assert row[["rating", "timestamp"]].values.tolist() == [[5, 100]]


def test_min_rating_drops_low_ratings_before_deduplication(tmp_path: Path) -> None:
    rows = [(1, 1, 2, 100), (1, 1, 5, 200), (1, 2, 4, 150), (1, 3, 5, 300), (1, 4, 1, 50)]
    inter = _csv(tmp_path / "i.csv", "user_id,item_id,rating,timestamp", rows)
    ds = _import(tmp_path, inter, min_rating=4)
    assert _triples(ds) == {("1", "2", 0), ("1", "1", 1), ("1", "3", 2)}
    assert _inter(tmp_path / "out").query("itemID == 0")[["rating", "timestamp"]].values.tolist() == [[5, 200]]
    ds = _import(tmp_path, inter)
    assert _triples(ds) == {("1", "4", 0), ("1", "1", 0), ("1", "2", 1), ("1", "3", 2)}


def test_kcore_is_applied_until_stable(tmp_path: Path) -> None:
    rows = [(u, i, t) for u in (1, 2, 3) for t, i in enumerate("abc")]
    rows += [(4, "a", 5), (4, "b", 6), (4, "d", 7), (5, "d", 1), (5, "e", 2), (5, "f", 3)]
    inter = _csv(tmp_path / "i.csv", "user_id,item_id,timestamp", rows)
    ds = _import(tmp_path, inter, kcore=3)
    # round 1 drops items d, e, f; then user 4 has 2 rows -> round 2 drops it
    assert ds.user_ids == ["1", "2", "3"] and ds.item_ids == ["a", "b", "c"]
    assert _triples(ds) == {(u, i, lab) for u in "123" for i, lab in zip("abc", (0, 1, 2))}


def test_kcore_filter_needs_several_rounds() -> None:
    df = pd.DataFrame({"user": [1, 1, 2, 2, 3, 3, 4], "item": ["a", "b", "a", "b", "a", "c", "c"]})
    out = kcore_filter(df, 2)
    assert sorted(zip(out.user, out.item)) == [(1, "a"), (1, "b"), (2, "a"), (2, "b")]
    assert len(kcore_filter(df, 0)) == 7


def test_items_missing_from_the_items_file_are_dropped(tmp_path: Path) -> None:
    rows = [(1, 1, 1), (1, 2, 2), (1, 99, 3), (1, 3, 4)]
    inter = _csv(tmp_path / "i.csv", "user_id,item_id,timestamp", rows)
    items = _csv(tmp_path / "items.csv", "item_id,title", [(1, "A"), (2, "B"), (3, "C"), (4, "never rated")])
    ds = _import(tmp_path, inter, items=items)
    assert ds.item_ids == ["1", "2", "3"]
    assert _triples(ds) == {("1", "1", 0), ("1", "2", 1), ("1", "3", 2)}


def test_an_existing_x_label_is_kept(tmp_path: Path) -> None:
    rows = [(1, 1, 2), (1, 2, 0), (1, 3, 1), (2, 1, 0), (2, 2, 2)]  # against the rule; user 2 has 2 rows
    inter = _csv(tmp_path / "i.csv", "user_id,item_id,x_label", rows)  # no time column needed
    ds = _import(tmp_path, inter)
    assert _triples(ds) == {("1", "1", 2), ("1", "2", 0), ("1", "3", 1), ("2", "1", 0), ("2", "2", 2)}
    assert list(_inter(tmp_path / "out").columns) == ["userID", "itemID", "x_label"]


def test_dates_as_timestamps(tmp_path: Path) -> None:
    rows = [("u", "x", "2020-01-03"), ("u", "y", "2020-01-01"), ("u", "z", "2020-01-02T12:00:00")]
    inter = _csv(tmp_path / "i.csv", "user_id,item_id,timestamp", rows)
    ds = _import(tmp_path, inter)
    assert _triples(ds) == {("u", "y", 0), ("u", "z", 1), ("u", "x", 2)}
    assert sorted(_inter(tmp_path / "out").timestamp) == [1577836800, 1577966400, 1578009600]


def test_round_trip_through_the_directory(tmp_path: Path) -> None:
    inter = _csv(tmp_path / "i.csv", "user_id,item_id,rating,timestamp", [(u, i, 3, t) for u, i, t in SPLIT_ROWS])
    items = _csv(tmp_path / "items.csv", "item_id,genres", [(i, "A|B" if i % 2 else "B|C") for i in range(1, 21)])
    ds = _import(tmp_path, inter, items=items, meta_cols=["genres"], meta_dim=4)
    back = load_dataset(tmp_path / "out")
    assert _triples(back) == _triples(ds)
    np.testing.assert_array_equal(back.features["meta"], ds.features["meta"])
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["meta_vocab"] == 3


# ------------------------------------------------------------------ features


def test_item_text_and_meta_tokens() -> None:
    assert split_multi(" a | |b|nan") == ["a", "b"]
    assert item_text(["Toy Story (1995)", "Animation|Comedy", float("nan")]) == "Toy Story (1995). Animation, Comedy"
    assert item_text(["", "nan"]) == ""
    assert item_meta_tokens(["genres", "director"], ["Drama|War", "N/A"]) == ["genres=Drama", "genres=War"]


def test_encode_meta_is_deterministic_and_padded() -> None:
    tokens = [["g=a", "g=b"], ["g=a"], ["g=b", "d=x"], ["g=a", "d=x"], ["d=only"]]
    z = encode_meta(tokens, dim=8)
    assert z.shape == (5, 8) and z.dtype == np.float32
    assert np.all(z[:, 3:] == 0)  # 3 shared tokens (d=only is in one item) -> rank 3
    assert np.all(z[4] == 0)  # no kept token
    np.testing.assert_array_equal(z, encode_meta(tokens, dim=8))
    np.testing.assert_allclose(encode_meta(tokens[::-1], dim=8)[::-1], z, atol=1e-6)
    # U * S of ln(n/df)-weighted tokens: squared norms add up to the matrix's energy
    idf = {"g=a": np.log(5 / 3), "g=b": np.log(5 / 2), "d=x": np.log(5 / 2)}
    energy = sum(idf[t] ** 2 for toks in tokens for t in toks if t in idf)
    assert float((z.astype(np.float64) ** 2).sum()) == pytest.approx(energy, rel=1e-5)


def test_encode_text_with_the_bundled_model() -> None:
    emb = encode_text(["a cat sat on the mat", "a kitten rested on the rug", "quarterly earnings fell sharply"],
                      progress=False, device="cpu")
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    assert encode_text([]).shape == (0, 384)


def test_import_builds_text_and_meta_features(tmp_path: Path) -> None:
    rows = [(u, i, 10 * u + i) for u in (1, 2, 3) for i in (1, 2, 3)]
    inter = _csv(tmp_path / "i.csv", "user_id,item_id,timestamp", rows)
    items = _csv(tmp_path / "items.csv", "item_id,title,genres,director", [
        (3, "Space war", "Sci-Fi|Action", "Lee"),
        (1, "A quiet romance", "Romance", "Kim"),
        (2, "Love in Paris", "Romance|Drama", "nan"),
    ])
    seen: list[list[str]] = []

    def fake_encoder(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return np.arange(len(texts) * 2, dtype=np.float32).reshape(-1, 2)

    ds = _import(tmp_path, inter, items=items, text_cols=["title", "genres"], meta_cols=["genres", "director"],
                 text_encoder=fake_encoder)
    # rows follow internal item ids (external 1, 2, 3), not the items file order
    assert seen == [["A quiet romance. Romance", "Love in Paris. Romance, Drama", "Space war. Sci-Fi, Action"]]
    assert ds.features["text"].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert ds.features["meta"].shape == (3, 128)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npy")) == ["meta_feat.npy", "text_feat.npy"]

    ds = _import(tmp_path, inter, items=items, text_cols=["title"])  # the real model
    real = load_dataset(tmp_path / "out").features["text"]
    assert real.shape == (3, 384)
    np.testing.assert_allclose(real[2], encode_text(["Space war"], progress=False)[0], atol=1e-5)


# ------------------------------------------------------------------ bad input


@pytest.fixture
def good(tmp_path: Path) -> dict[str, Path]:
    inter = _csv(tmp_path / "i.csv", "user_id,item_id,rating,timestamp", [(u, i, 3, t) for u, i, t in SPLIT_ROWS])
    items = _csv(tmp_path / "items.csv", "item_id,title", [(i, f"m{i}") for i in range(1, 21)])
    return {"inter": inter, "items": items}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        (lambda t, g: dict(interactions=t / "nope.csv"), "interactions file .*nope.csv does not exist"),
        (lambda t, g: dict(items=t / "nope.csv"), "items file .*nope.csv does not exist"),
        (lambda t, g: dict(interactions=_write(t / "x.csv", "user_id\titem_id\ttimestamp\n1\t2\t3\n")),
         "x.csv: expected comma-separated CSV, but the header is tab-separated"),
        (lambda t, g: dict(interactions=_write(t / "x.csv", "uid,item_id,timestamp\n1,2,3\n")),
         "x.csv: missing column\\(s\\) user_id; the file has: uid, item_id, timestamp"),
        (lambda t, g: dict(interactions=_write(t / "x.csv", "user_id,item_id\n1,2\n")),
         "missing time column timestamp \\(needed for the split\\); the file has: user_id, item_id"),
        (lambda t, g: dict(text_cols=["title", "plot"]), "items.csv: missing column\\(s\\) plot; the file has: item_id, title"),
        (lambda t, g: dict(items=None, meta_cols=["genres"]), "need an --items file"),
        (lambda t, g: dict(interactions=_write(t / "x.csv", "user_id,item_id,timestamp\n1,2,3\n"), min_rating=4),
         "--min-rating needs rating column rating; the file has: user_id, item_id, timestamp"),
        (lambda t, g: dict(interactions=_write(t / "x.csv", "user_id,item_id,rating,timestamp\n1,2,3,4\n1,3,good,5\n"),
                           min_rating=4), "rating column rating must be numeric; 1 rows are not \\('good' on line 3\\)|e.g. 'good' on line 3"),
        (lambda t, g: dict(interactions=_write(t / "x.csv", "user_id,item_id,timestamp\n1,2,3\n1,3,yesterday-ish\n")),
         "time column timestamp must hold numbers or dates; 1 rows do not \\(e.g. 'yesterday-ish' on line 3\\)"),
        (lambda t, g: dict(interactions=_write(t / "x.csv", "user_id,item_id,timestamp\n1,2,3\n,3,4\n")),
         "column user_id is empty on 1 rows \\(e.g. line 3\\)"),
        (lambda t, g: dict(interactions=_write(t / "x.csv", "user_id,item_id,x_label\n1,2,0\n1,3,4\n")),
         "x_label must be 0 \\(train\\), 1 \\(valid\\) or 2 \\(test\\); 1 rows are not"),
        (lambda t, g: dict(interactions=_write(t / "x.csv", "user_id,item_id,x_label\n1,2,0\n1,3,1\n")),
         "the test split is empty after filtering"),
        (lambda t, g: dict(interactions=_write(t / "x.csv", "")), "x.csv: the file is empty"),
        (lambda t, g: dict(interactions=_write(t / "x.csv", "user_id,item_id,timestamp\n")), "x.csv: has a header but no rows"),
        (lambda t, g: dict(kcore=50), "no interactions left after the 50-core filter"),
        (lambda t, g: dict(min_rating=4), "no interactions left after dropping ratings below 4"),
        (lambda t, g: dict(items=_write(t / "it.csv", "item_id,title\n100,a\n")), "no interactions left after dropping items missing"),
        (lambda t, g: dict(items=_write(t / "it.csv", "item_id,title\n1,a\n1,b\n")), "it.csv: column item_id has 1 duplicate ids \\(e.g. '1'\\)"),
        (lambda t, g: dict(interactions=_write(t / "x.csv", "user_id,item_id,timestamp\n1,2,3\n1,3\n1,4,5,6\n")),
         "x.csv: cannot parse as comma-separated CSV"),
        (lambda t, g: dict(name="../up"), "dataset name '../up' is not usable as a file name"),
        (lambda t, g: dict(out=_write(t / "notes.txt", "keep me")), "refusing to replace .*notes.txt: it is a file"),
    ],
)
def test_bad_input_raises_one_clear_line(tmp_path: Path, good: dict[str, Path], case, message: str) -> None:
    args = dict(interactions=good["inter"], items=good["items"], name="t", out=tmp_path / "out", kcore=0)
    args.update(case(tmp_path, good))
    with pytest.raises(DatasetError, match=message) as info:
        import_dataset(args.pop("interactions"), args.pop("items"), **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_a_directory_that_is_not_a_dataset_is_not_replaced(tmp_path: Path, good: dict[str, Path]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    with pytest.raises(DatasetError, match="refusing to replace"):
        import_dataset(good["inter"], None, kcore=0, name="t", out=out)
    assert (out / "thesis.tex").read_text() == "keep me"
    import_dataset(good["inter"], None, kcore=0, name="t", out=tmp_path / "fresh")
    import_dataset(good["inter"], None, kcore=0, name="t2", out=tmp_path / "fresh")  # a dataset dir is replaced
    assert sorted(p.name for p in (tmp_path / "fresh").glob("*.inter")) == ["t2.inter"]
