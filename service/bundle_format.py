"""The serving bundle's format, in one place: file names, manifest keys, expert
roles, tolerances and the checks a bundle's content must pass.

`offline/export.py` (the writer) and `service/bundle.py` (the reader) both use
this module, so they cannot drift apart; it needs numpy only (no torch, no FAISS),
so the service can import it and the offline side may too (offline -> service is an
allowed import direction; see docs/architecture.md).

Every check raises `FormatError` with a message that starts with the file it is
about; the writer and the reader turn it into their own error type
(`ExportError`, `BundleError`) so the CLI and the API keep their messages.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
SUPPORTED_FORMATS = frozenset({FORMAT_VERSION})

MANIFEST = "manifest.json"
INDEX_FILE = "items.faiss"
#: the float32 arrays: final embeddings and each item's split e_i = base_i + sum_e g_ie x_ie
FLOAT_ARRAYS = ("user_emb.npy", "item_emb.npy", "item_base.npy", "item_gates.npy", "item_experts.npy")
#: every file a bundle holds besides manifest.json (each listed with its sha256 in manifest["files"])
BUNDLE_FILES = (
    *FLOAT_ARRAYS,
    "user_ids.json",
    "item_ids.json",
    "seen_indptr.npy",
    "seen_indices.npy",
    "popularity.npy",
    INDEX_FILE,
)
REQUIRED_KEYS = ("format_version", "model_version", "created_at", "model", "dim", "n_users", "n_items",
                 "experts", "metrics", "files")
ROLES = ("dominant", "balanced", "complementary")

#: largest tolerated |item_emb - (item_base + gates . experts)|, relative to max(max |item_emb|, 1)
INVARIANT_RTOL = 1e-4
#: tolerated |sum(gates) - 1| per item when the model has experts
GATE_SUM_ATOL = 1e-3
#: items the reader checks the invariant on (all of them up to this many; the writer checks every item)
INVARIANT_SAMPLE = 2048


class FormatError(ValueError):
    """Content that breaks the bundle format; the message starts with the file."""


# ------------------------------------------------------------------ reading raw content


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (the manifest's checksums)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_npy(data: bytes, where: Path | str) -> np.ndarray:
    """A plain numeric .npy array from its bytes; never unpickles."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle; we refuse them
        raise FormatError(f"{where} is not a plain numeric .npy array ({exc})") from exc
    except Exception as exc:  # truncated or not an .npy at all
        raise FormatError(f"{where} cannot be read as .npy ({exc})") from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
        raise FormatError(f"{where} has dtype {getattr(array, 'dtype', type(array))}, expected numbers")
    return array


def read_json(data: bytes, where: Path | str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where} is not valid JSON ({exc})") from exc


# ------------------------------------------------------------------ checks


def check_array(array: np.ndarray, where: Path | str, *, shape: tuple[int, ...] | None = None,
                ndim: int | None = None, kinds: str = "f") -> None:
    """dtype kind in `kinds`, the given shape (or number of dimensions), finite floats."""
    if array.dtype.kind not in kinds:
        expected = "floating point" if kinds == "f" else f"one of the dtype kinds {kinds!r}"
        raise FormatError(f"{where} has dtype {array.dtype}, expected {expected}")
    if ndim is not None and array.ndim != ndim:
        raise FormatError(f"{where} has shape {array.shape}, expected {ndim} dimensions")
    if shape is not None and array.shape != shape:
        raise FormatError(f"{where} has shape {array.shape}, expected {shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise FormatError(f"{where} contains NaN or infinite values")


def check_ids(value: Any, expected: int, where: Path | str, *, allow_int: bool = False) -> list[str]:
    """A JSON list of `expected` distinct external ids, as strings (a run may hold
    integer ids, `allow_int`; the bundle always stores strings)."""
    kinds = (str, int) if allow_int else (str,)
    if not isinstance(value, list) or not all(isinstance(v, kinds) and not isinstance(v, bool) for v in value):
        what = "strings or integers" if allow_int else "strings"
        raise FormatError(f"{where} must be a JSON list of ids ({what})")
    ids = [str(v) for v in value]
    if len(ids) != expected:
        raise FormatError(f"{where} lists {len(ids)} ids, expected {expected} (rows of the embeddings)")
    if len(set(ids)) != len(ids):
        raise FormatError(f"{where} has duplicate ids")
    return ids


def check_experts(value: Any, expected: int, where: Path | str) -> list[dict[str, Any]]:
    """`expected` experts as [{name, role, modality}]: distinct non-empty names, a role
    from ROLES, a string or null modality, which a dominant expert must name."""
    if not isinstance(value, list):
        raise FormatError(f"{where} must be a JSON list of {{name, role, modality}}")
    out: list[dict[str, Any]] = []
    for n, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise FormatError(f"{where}: expert #{n} needs a non-empty string 'name'")
        role = item.get("role")
        if role not in ROLES:
            raise FormatError(f"{where}: expert {item['name']!r} has role {role!r}, expected one of {ROLES}")
        modality = item.get("modality")
        if modality is not None and not isinstance(modality, str):
            raise FormatError(f"{where}: expert {item['name']!r} has a non-string modality {modality!r}")
        if role == "dominant" and not modality:
            raise FormatError(f"{where}: dominant expert {item['name']!r} must name its modality")
        out.append({"name": item["name"], "role": role, "modality": modality})
    if len({e["name"] for e in out}) != len(out):
        raise FormatError(f"{where} has duplicate expert names")
    if len(out) != expected:
        raise FormatError(f"{where} describes {len(out)} experts but item_gates.npy has {expected} columns")
    return out


def check_csr(indptr: np.ndarray, indices: np.ndarray, n_rows: int, n_cols: int,
              indptr_where: Path | str, indices_where: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Each user's training items as CSR (row pointer, item indices) over
    [n_rows, n_cols]; returned as int64."""
    if indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        raise FormatError(f"{indptr_where} / {Path(indices_where).name} must hold integers")
    if indptr.ndim != 1 or indices.ndim != 1:
        raise FormatError(f"{indptr_where} / {Path(indices_where).name} must be one-dimensional")
    indptr, indices = indptr.astype(np.int64), indices.astype(np.int64)
    if indptr.shape != (n_rows + 1,):
        raise FormatError(f"{indptr_where} has {indptr.size} entries, expected n_users + 1 = {n_rows + 1}")
    if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
        raise FormatError(f"{indptr_where} is not a valid CSR row pointer for {Path(indices_where).name}")
    if indices.size and (indices.min() < 0 or indices.max() >= n_cols):
        raise FormatError(f"{indices_where} holds item indices outside [0, {n_cols})")
    return indptr, indices


def check_gates(gates: np.ndarray, where: Path | str) -> None:
    """Non-negative routing weights summing to 1 per item (when there are experts)."""
    if not gates.shape[1]:
        return
    if gates.min() < -1e-6:
        raise FormatError(f"{where} has negative gate weights")
    sums = gates.sum(axis=1, dtype=np.float64)
    bad = np.abs(sums - 1.0) > GATE_SUM_ATOL
    if bad.any():
        row = int(np.argmax(bad))
        raise FormatError(f"{where}: row {row} sums to {sums[row]:.4g}, expected 1")


def check_invariant(item_emb: np.ndarray, base: np.ndarray, gates: np.ndarray, experts: np.ndarray,
                    where: Path | str, rows: Sequence[int] | np.ndarray | None = None, chunk: int = 8192) -> None:
    """item_emb == item_base + gates . experts on `rows` (default: every item), or the
    explanations would not add up to the served score."""
    rows = np.arange(item_emb.shape[0]) if rows is None else np.asarray(rows)
    worst, worst_row = 0.0, -1
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        recon = base[part].astype(np.float64)
        if gates.shape[1]:
            recon = recon + np.einsum("ie,ied->id", gates[part].astype(np.float64), experts[part].astype(np.float64))
        diff = np.abs(item_emb[part] - recon).max(axis=1)
        if diff.size and diff.max() > worst:
            worst, worst_row = float(diff.max()), int(part[int(diff.argmax())])
    scale = max(float(np.abs(item_emb).max(initial=0.0)), 1.0)
    if worst > INVARIANT_RTOL * scale:
        raise FormatError(
            f"{where} does not equal item_base + gates . experts (row {worst_row} is off by {worst:.3g}); "
            "explanations would not add up to the served score"
        )


def invariant_rows(n_items: int) -> np.ndarray:
    """The items the reader checks the invariant on: all, or a fixed sample of INVARIANT_SAMPLE."""
    if n_items <= INVARIANT_SAMPLE:
        return np.arange(n_items)
    return np.random.default_rng(0).choice(n_items, INVARIANT_SAMPLE, replace=False)


def check_manifest(manifest: Any, where: Path | str) -> dict[str, Any]:
    """The manifest's required keys, a supported format_version, positive sizes, and a
    `files` map that lists every bundle file by a plain name."""
    if not isinstance(manifest, dict):
        raise FormatError(f"{where}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise FormatError(f"{where}: missing keys {missing}")
    if manifest["format_version"] not in SUPPORTED_FORMATS:
        raise FormatError(f"{where}: format_version {manifest['format_version']!r} is not supported "
                          f"(this server reads {sorted(SUPPORTED_FORMATS)})")
    for key in ("dim", "n_users", "n_items"):
        if not isinstance(manifest[key], int) or isinstance(manifest[key], bool) or manifest[key] <= 0:
            raise FormatError(f"{where}: {key} must be a positive integer")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise FormatError(f"{where}: 'files' must map file names to sha256 hex digests")
    absent = [f for f in BUNDLE_FILES if f not in files]
    if absent:
        raise FormatError(f"{where}: 'files' does not list {absent}")
    for name in files:
        if Path(name).name != name or name in ("", ".", ".."):
            raise FormatError(f"{where}: file name {name!r} must be a plain name inside the bundle")
    if not isinstance(manifest["model_version"], str) or not manifest["model_version"]:
        raise FormatError(f"{where}: model_version must be a non-empty string")
    return manifest
