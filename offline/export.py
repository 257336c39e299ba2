"""`magnet export`: a finished run directory -> a verified serving bundle.

Reads only ``RUN/arrays/`` and ``RUN/metrics.json`` (see docs/architecture.md) so a
bundle can be made without the dataset. The bundle is written into a temporary
sibling directory and renamed into place only when complete, so a half-written
bundle never looks like a real one and a serving process reloading the path sees
either the old bundle or the new one.

Nothing here uses pickle: arrays are read with ``allow_pickle=False`` and written
as plain ``.npy``; ids and expert descriptions are JSON; the index is FAISS's own
binary format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import REQUIRED_FILES

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ROLES = ("dominant", "balanced", "complementary")

ARRAY_FILES = (
    "user_emb.npy",
    "item_emb.npy",
    "item_base.npy",
    "item_gates.npy",
    "item_experts.npy",
    "train_indptr.npy",
    "train_indices.npy",
)
JSON_FILES = ("experts.json", "user_ids.json", "item_ids.json")

#: every file a bundle holds besides manifest.json: the loader's list, so writer and reader agree
BUNDLE_FILES = REQUIRED_FILES

#: catalogue size up to which the exact IndexFlatIP is used; above it HNSW32 (efSearch 64)
#: is >= 3x faster at top-10 and top-50 with recall@10 >= 0.96 (docs/benchmarks.md, retrieval)
EXACT_MAX_ITEMS = 10_000

#: largest tolerated |item_emb - (item_base + gates . experts)|, relative to max |item_emb|
INVARIANT_RTOL = 1e-4
#: tolerated |sum(gates) - 1| per item when the model has experts
GATE_SUM_ATOL = 1e-3


class ExportError(ValueError):
    """A run that cannot be exported; the message names the file and the problem."""


# ------------------------------------------------------------------------ reading


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ExportError(f"missing file {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle; we refuse them
        raise ExportError(f"{path} is not a plain numeric .npy array ({exc})") from exc
    except Exception as exc:  # truncated or not an .npy at all
        raise ExportError(f"{path} cannot be read as .npy ({exc})") from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
        raise ExportError(f"{path} has dtype {getattr(array, 'dtype', type(array))}, expected numbers")
    return array


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise ExportError(f"missing file {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path} is not valid JSON ({exc})") from exc


def _float_array(path: Path, array: np.ndarray, ndim: int) -> np.ndarray:
    if array.dtype.kind != "f":
        raise ExportError(f"{path} has dtype {array.dtype}, expected floating point")
    if array.ndim != ndim:
        raise ExportError(f"{path} has shape {array.shape}, expected {ndim} dimensions")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ExportError(f"{path} contains NaN or infinite values")
    return array


def _ids(path: Path, value: Any, expected: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise ExportError(f"{path} must be a JSON list of ids (strings or integers)")
    ids = [str(v) for v in value]
    if len(ids) != expected:
        raise ExportError(f"{path} lists {len(ids)} ids, expected {expected} (rows of the embeddings)")
    if len(set(ids)) != len(ids):
        raise ExportError(f"{path} has duplicate ids")
    return ids


def _experts(path: Path, value: Any, expected: int) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ExportError(f"{path} must be a JSON list of {{name, role, modality}}")
    out: list[dict[str, Any]] = []
    for n, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ExportError(f"{path}: expert #{n} needs a non-empty string 'name'")
        role = item.get("role")
        if role not in ROLES:
            raise ExportError(f"{path}: expert {item['name']!r} has role {role!r}, expected one of {ROLES}")
        modality = item.get("modality")
        if modality is not None and not isinstance(modality, str):
            raise ExportError(f"{path}: expert {item['name']!r} has a non-string modality {modality!r}")
        if role == "dominant" and not modality:
            raise ExportError(f"{path}: dominant expert {item['name']!r} must name its modality")
        out.append({"name": item["name"], "role": role, "modality": modality})
    if len({e["name"] for e in out}) != len(out):
        raise ExportError(f"{path} has duplicate expert names")
    if len(out) != expected:
        raise ExportError(f"{path} describes {len(out)} experts but item_gates.npy has {expected} columns")
    return out


def _csr(indptr_path: Path, indptr: np.ndarray, indices_path: Path, indices: np.ndarray,
         n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    if indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        raise ExportError(f"{indptr_path.name} / {indices_path.name} must hold integers")
    indptr = indptr.astype(np.int64).ravel()
    indices = indices.astype(np.int64).ravel()
    if indptr.shape != (n_rows + 1,):
        raise ExportError(f"{indptr_path} has {indptr.size} entries, expected n_users + 1 = {n_rows + 1}")
    if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
        raise ExportError(f"{indptr_path} is not a valid CSR row pointer for {indices_path.name}")
    if indices.size and (indices.min() < 0 or indices.max() >= n_cols):
        raise ExportError(f"{indices_path} holds item indices outside [0, {n_cols})")
    return indptr, indices


def _check_invariant(item_emb: np.ndarray, base: np.ndarray, gates: np.ndarray,
                     experts: np.ndarray, chunk: int = 8192) -> None:
    """item_emb == item_base + gates . experts, or explanations would not add up."""
    scale = max(float(np.abs(item_emb).max(initial=0.0)), 1e-12)
    worst, worst_row = 0.0, -1
    for start in range(0, item_emb.shape[0], chunk):
        stop = start + chunk
        recon = base[start:stop].astype(np.float64)
        if gates.shape[1]:
            recon = recon + np.einsum("ie,ied->id", gates[start:stop].astype(np.float64),
                                      experts[start:stop].astype(np.float64))
        diff = np.abs(item_emb[start:stop] - recon).max(axis=1)
        if diff.size and diff.max() > worst:
            worst, worst_row = float(diff.max()), start + int(diff.argmax())
    if worst > INVARIANT_RTOL * max(scale, 1.0):
        raise ExportError(
            f"item_emb.npy does not equal item_base + gates . experts (row {worst_row} is off by {worst:.3g}); "
            "explanations would not add up to the served score"
        )


def read_run_arrays(run: Path) -> dict[str, Any]:
    """Loads and cross-checks RUN/arrays/ and RUN/metrics.json; ExportError names any bad file."""
    run = Path(run)
    if not run.is_dir():
        raise ExportError(f"run directory {run} does not exist")
    arrays = run / "arrays"
    if not arrays.is_dir():
        raise ExportError(f"missing directory {arrays} (is {run} a finished `magnet train` run?)")
    metrics = _load_json(run / "metrics.json")
    if not isinstance(metrics, dict):
        raise ExportError(f"{run / 'metrics.json'} must hold a JSON object")

    raw = {name: _load_npy(arrays / name) for name in ARRAY_FILES}
    user_emb = _float_array(arrays / "user_emb.npy", raw["user_emb.npy"], 2)
    item_emb = _float_array(arrays / "item_emb.npy", raw["item_emb.npy"], 2)
    item_base = _float_array(arrays / "item_base.npy", raw["item_base.npy"], 2)
    gates = _float_array(arrays / "item_gates.npy", raw["item_gates.npy"], 2)
    experts_arr = _float_array(arrays / "item_experts.npy", raw["item_experts.npy"], 3)

    n_users, dim = user_emb.shape
    n_items = item_emb.shape[0]
    n_experts = gates.shape[1]
    if n_users == 0 or n_items == 0 or dim == 0:
        raise ExportError(f"{arrays}: empty embeddings (users {n_users}, items {n_items}, dim {dim})")
    if item_emb.shape[1] != dim:
        raise ExportError(f"{arrays / 'item_emb.npy'} has dim {item_emb.shape[1]}, user_emb.npy has {dim}")
    if item_base.shape != (n_items, dim):
        raise ExportError(f"{arrays / 'item_base.npy'} has shape {item_base.shape}, expected {(n_items, dim)}")
    if gates.shape[0] != n_items:
        raise ExportError(f"{arrays / 'item_gates.npy'} has {gates.shape[0]} rows, expected {n_items}")
    if experts_arr.shape != (n_items, n_experts, dim):
        raise ExportError(
            f"{arrays / 'item_experts.npy'} has shape {experts_arr.shape}, expected {(n_items, n_experts, dim)}"
        )
    if n_experts:
        if gates.min() < -1e-6:
            raise ExportError(f"{arrays / 'item_gates.npy'} has negative gate weights")
        sums = gates.sum(axis=1, dtype=np.float64)
        bad = np.abs(sums - 1.0) > GATE_SUM_ATOL
        if bad.any():
            row = int(np.argmax(bad))
            raise ExportError(f"{arrays / 'item_gates.npy'}: row {row} sums to {sums[row]:.4g}, expected 1")
    _check_invariant(item_emb, item_base, gates, experts_arr)

    experts = _experts(arrays / "experts.json", _load_json(arrays / "experts.json"), n_experts)
    user_ids = _ids(arrays / "user_ids.json", _load_json(arrays / "user_ids.json"), n_users)
    item_ids = _ids(arrays / "item_ids.json", _load_json(arrays / "item_ids.json"), n_items)
    indptr, indices = _csr(arrays / "train_indptr.npy", raw["train_indptr.npy"],
                           arrays / "train_indices.npy", raw["train_indices.npy"], n_users, n_items)
    return {
        "metrics": metrics,
        "user_emb": user_emb,
        "item_emb": item_emb,
        "item_base": item_base,
        "item_gates": gates,
        "item_experts": experts_arr,
        "experts": experts,
        "user_ids": user_ids,
        "item_ids": item_ids,
        "seen_indptr": indptr,
        "seen_indices": indices,
    }


# ------------------------------------------------------------------------ writing


def build_index(item_emb: np.ndarray, *, exact_max_items: int, hnsw_m: int = 32,
                ef_construction: int = 40, ef_search: int = 64) -> tuple[Any, dict[str, Any]]:
    """Exact inner-product index for small catalogs, HNSW above `exact_max_items`.

    Returns the index and the manifest's ``index`` entry recording the choice.
    """
    import faiss

    n, dim = item_emb.shape
    data = np.ascontiguousarray(item_emb, dtype=np.float32)
    if n <= exact_max_items:
        index = faiss.IndexFlatIP(dim)
        index.add(data)
        return index, {"type": "flat", "factory": "Flat", "metric": "inner_product", "exact": True}
    factory = f"HNSW{hnsw_m},Flat"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    hnsw = faiss.downcast_index(index)
    hnsw.hnsw.efConstruction = ef_construction
    hnsw.hnsw.efSearch = ef_search
    index.add(data)
    return index, {
        "type": "hnsw",
        "factory": factory,
        "metric": "inner_product",
        "exact": False,
        "ef_construction": ef_construction,
        "ef_search": ef_search,
    }


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, recursively, so a file stays strict JSON (metrics.json may carry NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _replace_dir(tmp: Path, out: Path) -> None:
    """Moves the finished temp dir to `out`, replacing an older bundle there."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_bundle(
    run: Path,
    out: Path,
    *,
    exact_max_items: int = EXACT_MAX_ITEMS,
    hnsw_m: int = 32,
    ef_construction: int = 40,
    ef_search: int = 64,
) -> Path:
    """Writes the serving bundle for `run` at `out` and returns `out`.

    `out` may not exist yet, be empty, or hold an older bundle (it is replaced);
    anything else is refused rather than deleted. Catalogs above `exact_max_items`
    get an approximate HNSW index (recorded in manifest["index"]).
    """
    run, out = Path(run), Path(out)
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not (out / "manifest.json").is_file():
            raise ExportError(f"{out} is a non-empty directory that is not a bundle; refusing to overwrite it")
    started = time.perf_counter()
    data = read_run_arrays(run)
    n_users, dim = data["user_emb"].shape
    n_items = data["item_emb"].shape[0]
    popularity = np.bincount(data["seen_indices"], minlength=n_items).astype(np.int64)
    index, index_info = build_index(
        data["item_emb"], exact_max_items=exact_max_items, hnsw_m=hnsw_m,
        ef_construction=ef_construction, ef_search=ef_search,
    )

    import faiss

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; the API may run as another user than the exporter
    try:
        arrays = {
            "user_emb.npy": data["user_emb"],
            "item_emb.npy": data["item_emb"],
            "item_base.npy": data["item_base"],
            "item_gates.npy": data["item_gates"],
            "item_experts.npy": data["item_experts"],
            "seen_indptr.npy": data["seen_indptr"],
            "seen_indices.npy": data["seen_indices"],
            "popularity.npy": popularity,
        }
        for name, array in arrays.items():
            np.save(tmp / name, np.ascontiguousarray(array), allow_pickle=False)
        (tmp / "user_ids.json").write_text(json.dumps(data["user_ids"]), encoding="utf-8")
        (tmp / "item_ids.json").write_text(json.dumps(data["item_ids"]), encoding="utf-8")
        faiss.write_index(index, str(tmp / "items.faiss"))

        files = {name: sha256_file(tmp / name) for name in BUNDLE_FILES}
        created = time.gmtime()
        metrics = data["metrics"]
        model = str(metrics.get("model") or "unknown")
        digest = hashlib.sha256(("".join(files.values()) + uuid.uuid4().hex).encode()).hexdigest()[:10]
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_version": f"{model}-{time.strftime('%Y%m%dT%H%M%SZ', created)}-{digest}",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", created),
            "model": model,
            "dataset": metrics.get("dataset"),
            "dim": int(dim),
            "n_users": int(n_users),
            "n_items": int(n_items),
            "n_experts": len(data["experts"]),
            "experts": data["experts"],
            "metrics": json_safe(metrics),
            "index": index_info,
            "shapes": {name: list(array.shape) for name, array in arrays.items()},
            "source_run": str(run.resolve()),
            "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, allow_nan=False), encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported bundle %s (%s, %d users, %d items, %s index) in %.2fs",
             out, manifest["model_version"], n_users, n_items, index_info["type"],
             time.perf_counter() - started)
    return out
