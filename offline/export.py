"""`magnet export`: a finished run directory -> a verified serving bundle.

Reads only ``RUN/arrays/`` and ``RUN/metrics.json`` (see docs/architecture.md) so a
bundle can be made without the dataset. What a bundle holds and the checks its
content must pass belong to `service.bundle_format`, shared with the loader. The
bundle is written into a hidden sibling directory, verified by loading it with the
service's own loader, and only then published (`offline.publish`), so a half-written
or unservable bundle never looks like a real one and a serving process reloading
the path sees either the old bundle or the new one.

Nothing here uses pickle: arrays are read with ``allow_pickle=False`` and written
as plain ``.npy``; ids and expert descriptions are JSON; the index is FAISS's own
binary format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from offline.publish import staged
from service.bundle import BundleError, load_bundle
from service import bundle_format as fmt
from service.item_files import ItemFileError, read_item_files, write_item_files

log = logging.getLogger(__name__)

#: what `magnet train` writes into RUN/arrays/ for export (see docs/architecture.md)
RUN_ARRAYS = (
    "user_emb.npy",
    "item_emb.npy",
    "item_base.npy",
    "item_gates.npy",
    "item_experts.npy",
    "train_indptr.npy",
    "train_indices.npy",
)
RUN_JSON = ("experts.json", "user_ids.json", "item_ids.json")

#: catalogue size up to which the exact IndexFlatIP is used; above it HNSW32 (efSearch 64),
#: faster at a small loss of recall (docs/benchmarks.md, retrieval)
EXACT_MAX_ITEMS = 10_000


class ExportError(ValueError):
    """A run that cannot be exported; the message names the file and the problem."""


# ------------------------------------------------------------------------ reading


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise ExportError(f"missing file {path}")
    return path.read_bytes()


def read_run_arrays(run: Path) -> dict[str, Any]:
    """Loads and cross-checks RUN/arrays/ and RUN/metrics.json; ExportError names any bad file."""
    try:
        return _read_run_arrays(Path(run))
    except fmt.FormatError as exc:
        raise ExportError(str(exc)) from exc


def _read_run_arrays(run: Path) -> dict[str, Any]:
    if not run.is_dir():
        raise ExportError(f"run directory {run} does not exist")
    arrays = run / "arrays"
    if not arrays.is_dir():
        raise ExportError(f"missing directory {arrays} (is {run} a finished `magnet train` run?)")
    metrics = fmt.read_json(_read(run / "metrics.json"), run / "metrics.json")
    if not isinstance(metrics, dict):
        raise ExportError(f"{run / 'metrics.json'} must hold a JSON object")

    raw = {name: fmt.read_npy(_read(arrays / name), arrays / name) for name in RUN_ARRAYS}
    for name, ndim in (("user_emb.npy", 2), ("item_emb.npy", 2), ("item_base.npy", 2), ("item_gates.npy", 2),
                       ("item_experts.npy", 3)):
        fmt.check_array(raw[name], arrays / name, ndim=ndim)
    user_emb, item_emb, item_base, gates, experts_arr = (
        np.ascontiguousarray(raw[name], dtype=np.float32)
        for name in ("user_emb.npy", "item_emb.npy", "item_base.npy", "item_gates.npy", "item_experts.npy")
    )

    n_users, dim = user_emb.shape
    n_items = item_emb.shape[0]
    n_experts = gates.shape[1]
    if n_users == 0 or n_items == 0 or dim == 0:
        raise ExportError(f"{arrays}: empty embeddings (users {n_users}, items {n_items}, dim {dim})")
    fmt.check_array(item_emb, arrays / "item_emb.npy", shape=(n_items, dim))
    fmt.check_array(item_base, arrays / "item_base.npy", shape=(n_items, dim))
    fmt.check_array(gates, arrays / "item_gates.npy", shape=(n_items, n_experts))
    fmt.check_array(experts_arr, arrays / "item_experts.npy", shape=(n_items, n_experts, dim))
    fmt.check_gates(gates, arrays / "item_gates.npy")
    fmt.check_invariant(item_emb, item_base, gates, experts_arr, arrays / "item_emb.npy")

    experts = fmt.check_experts(fmt.read_json(_read(arrays / "experts.json"), arrays / "experts.json"), n_experts,
                            arrays / "experts.json")
    user_ids = fmt.check_ids(fmt.read_json(_read(arrays / "user_ids.json"), arrays / "user_ids.json"), n_users,
                         arrays / "user_ids.json", allow_int=True)
    item_ids = fmt.check_ids(fmt.read_json(_read(arrays / "item_ids.json"), arrays / "item_ids.json"), n_items,
                         arrays / "item_ids.json", allow_int=True)
    indptr, indices = fmt.check_csr(raw["train_indptr.npy"], raw["train_indices.npy"], n_users, n_items,
                                arrays / "train_indptr.npy", arrays / "train_indices.npy")
    try:
        item_files = read_item_files(arrays, n_items)
    except ItemFileError as exc:
        raise ExportError(str(exc)) from None
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
        "item_files": item_files,
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


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, recursively, so a file stays strict JSON (metrics.json may carry NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


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
    run = Path(run)
    check_bundle_out(out)
    return write_bundle(read_run_arrays(run), out, source_run=run, manifest_extra={"cold_items": 0},
                        exact_max_items=exact_max_items, hnsw_m=hnsw_m,
                        ef_construction=ef_construction, ef_search=ef_search)


def check_bundle_out(out: Path) -> None:
    """`out` may not exist yet, be empty, or hold an older bundle; anything else is refused."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not (out / fmt.MANIFEST).is_file():
            raise ExportError(f"{out} is a non-empty directory that is not a bundle; refusing to overwrite it")


def write_bundle(
    data: dict[str, Any],
    out: Path,
    *,
    source_run: Path,
    manifest_extra: dict[str, Any] | None = None,
    exact_max_items: int = EXACT_MAX_ITEMS,
    hnsw_m: int = 32,
    ef_construction: int = 40,
    ef_search: int = 64,
) -> Path:
    """Writes arrays in `read_run_arrays`' form as a verified bundle at `out` (staged,
    loaded with the service's loader, then published); `manifest_extra` adds keys to
    manifest.json (add-items: ``cold_items``)."""
    out = Path(out)
    check_bundle_out(out)
    started = time.perf_counter()
    n_users, dim = data["user_emb"].shape
    n_items = data["item_emb"].shape[0]
    popularity = np.bincount(data["seen_indices"], minlength=n_items).astype(np.int64)
    index, index_info = build_index(
        data["item_emb"], exact_max_items=exact_max_items, hnsw_m=hnsw_m,
        ef_construction=ef_construction, ef_search=ef_search,
    )

    import faiss

    with staged(out) as tmp:
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
        faiss.write_index(index, str(tmp / fmt.INDEX_FILE))
        optional = write_item_files(tmp, data["item_files"])  # listed and checksummed like the rest

        files = {name: fmt.sha256_file(tmp / name) for name in (*fmt.BUNDLE_FILES, *optional)}
        created = time.gmtime()
        metrics = data["metrics"]
        model = str(metrics.get("model") or "unknown")
        digest = hashlib.sha256(("".join(files.values()) + uuid.uuid4().hex).encode()).hexdigest()[:10]
        manifest = {
            "format_version": fmt.FORMAT_VERSION,
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
            "source_run": str(Path(source_run).resolve()),
            **(manifest_extra or {}),
            "files": files,
        }
        (tmp / fmt.MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False), encoding="utf-8")
        try:  # what is published is what the server will accept
            load_bundle(tmp)
        except BundleError as exc:
            raise ExportError(f"the bundle written for {source_run} fails the loader's verification: {exc}") from exc
    log.info("exported bundle %s (%s, %d users, %d items, %s index) in %.2fs",
             out, manifest["model_version"], n_users, n_items, index_info["type"],
             time.perf_counter() - started)
    return out
