"""Item encoders recorded by `magnet import`: a new item encoded later gets the vector
it would have got at import (hand-made catalogues; the ml100k check with the real
sentence encoder is in test_ml100k_import.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offline.dataset import DatasetError, load_dataset
from offline.features import item_meta_tokens
from offline.importer import import_dataset
from offline.item_encoders import ENCODERS_DIR, EncoderError, ItemEncoders, encode_items


def hashed_text(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in for the sentence encoder: 8 dims from each text's hash."""
    out = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], dtype=np.uint8) for t in texts]
    return (np.stack(out).astype(np.float32) / 255.0) if out else np.zeros((0, 8), np.float32)


def make_catalogue(tmp_path: Path, n_items: int, n_tokens: int, seed: int = 0) -> tuple[Path, Path]:
    """Interactions (every user rates 6 random items) and an items file with a title,
    a multi-valued genre column and a tag column drawn from `n_tokens` values."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(max(40, n_items // 3)):
        for t, i in enumerate(rng.choice(n_items, 6, replace=False)):
            rows.append(f"{u},{i},{t}")
    inter = tmp_path / "inter.csv"
    inter.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    genres = [f"g{k}" for k in range(12)]
    lines = []
    for i in range(n_items):
        g = "|".join(rng.choice(genres, rng.integers(1, 4), replace=False))
        tags = "|".join(f"t{k}" for k in rng.choice(n_tokens, 5, replace=False))
        lines.append(f"{i},Item {i} title {rng.integers(100)},{g},{tags}")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,genres,tags\n" + "\n".join(lines) + "\n")
    return inter, items


def _import(tmp_path: Path, inter: Path, items: Path, **kw) -> Path:
    out = tmp_path / "data"
    import_dataset(inter, items, text_cols=["title", "genres"], meta_cols=["genres", "tags"], kcore=0,
                   name="t", out=out, text_encoder=hashed_text, **kw)
    return out


def _raw(items: Path) -> pd.DataFrame:
    return pd.read_csv(items, dtype=str, keep_default_na=False)


@pytest.mark.parametrize("n_items, n_tokens", [(30, 20), (400, 600)], ids=["lapack", "arpack"])
def test_re_encoding_imported_items_gives_their_rows(tmp_path: Path, n_items: int, n_tokens: int) -> None:
    inter, items = make_catalogue(tmp_path, n_items, n_tokens)
    out = _import(tmp_path, inter, items, meta_dim=16)
    ds = load_dataset(out)
    raw = _raw(items).set_index("item_id", drop=False).loc[ds.item_ids]
    again = encode_items(out, raw, text_encoder=hashed_text)
    assert sorted(again) == sorted(ds.features) == ["meta", "text"]
    for m in again:
        assert again[m].dtype == np.float32 and again[m].shape == ds.features[m].shape
        np.testing.assert_allclose(again[m], ds.features[m], atol=1e-5)
    # order of the new rows is the caller's, not the import's
    rev = encode_items(out, raw.iloc[::-1], text_encoder=hashed_text)
    np.testing.assert_allclose(rev["meta"], ds.features["meta"][::-1], atol=1e-5)


def test_recorded_files_are_plain_json_and_npy(tmp_path: Path) -> None:
    inter, items = make_catalogue(tmp_path, 30, 20)
    out = _import(tmp_path, inter, items, meta_dim=16)
    files = sorted(p.name for p in (out / ENCODERS_DIR).iterdir())
    assert files == ["encoders.json", "meta_components.npy", "meta_idf.npy", "meta_vocab.json"]
    spec = json.loads((out / ENCODERS_DIR / "encoders.json").read_text())
    assert spec["item_col"] == "item_id" and spec["title_col"] == "title"
    assert spec["text"] == {"columns": ["title", "genres"], "model": "all-MiniLM-L6-v2", "dim": 8}
    assert spec["meta"]["columns"] == ["genres", "tags"] and spec["meta"]["dim"] == 16
    vocab = json.loads((out / ENCODERS_DIR / "meta_vocab.json").read_text())
    idf = np.load(out / ENCODERS_DIR / "meta_idf.npy", allow_pickle=False)
    # idf by hand: ln(n / df) for each kept token
    raw = _raw(items)
    tokens = [set(item_meta_tokens(["genres", "tags"], v)) for v in raw[["genres", "tags"]].itertuples(index=False)]
    for t, w in zip(vocab, idf):
        df = sum(t in s for s in tokens)
        assert df >= 2 and w == pytest.approx(np.log(len(tokens) / df))
    assert vocab == sorted(vocab)
    enc = ItemEncoders.read(out)
    assert enc.content_columns == ["title", "genres", "tags"] and enc.modalities == ["meta", "text"]


def test_a_new_item_is_encoded_with_the_old_vocabulary(tmp_path: Path) -> None:
    """A token the import never kept adds nothing; a known one adds its idf-weighted component."""
    inter, items = make_catalogue(tmp_path, 30, 20)
    out = _import(tmp_path, inter, items, meta_dim=16)
    enc = ItemEncoders.read(out)
    assert enc.meta is not None
    new = pd.DataFrame({"item_id": ["n1", "n2"], "title": ["x", "x"], "genres": ["g1", "g1|never-seen"],
                        "tags": ["", "brand-new"]})
    z = enc.encode(new, text_encoder=hashed_text)
    np.testing.assert_allclose(z["meta"][0], z["meta"][1], atol=1e-7)
    j = enc.meta.vocab.index("genres=g1")
    np.testing.assert_allclose(z["meta"][0], enc.meta.idf[j] * enc.meta.components[:, j], atol=1e-6)


def test_an_old_import_without_encoders_is_named(tmp_path: Path) -> None:
    inter, items = make_catalogue(tmp_path, 30, 20)
    out = _import(tmp_path, inter, items, meta_dim=16)
    import shutil

    shutil.rmtree(out / ENCODERS_DIR)
    with pytest.raises(EncoderError, match="has no recorded item encoders") as info:
        encode_items(out, _raw(items))
    assert isinstance(info.value, DatasetError) and "\n" not in str(info.value)
    with pytest.raises(EncoderError, match="missing content column\\(s\\) tags"):
        ItemEncoders(item_col="item_id", meta_cols=["tags"]).encode(pd.DataFrame({"item_id": ["1"]}))


def test_reimport_over_a_dataset_with_encoders_is_allowed(tmp_path: Path) -> None:
    inter, items = make_catalogue(tmp_path, 30, 20)
    _import(tmp_path, inter, items, meta_dim=16)
    out = _import(tmp_path, inter, items, meta_dim=8)
    assert ItemEncoders.read(out).meta_dim == 8
