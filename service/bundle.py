"""Loading a serving bundle and refusing any that fails verification.

Every file named in ``manifest.json["files"]`` is read once into memory, its sha256
checked against the manifest, and only then parsed (so what was verified is what is
served, even if the directory is replaced mid-load). What a bundle must hold and the
checks on it belong to `service.bundle_format` (shared with the exporter); here they
are applied: shapes against the manifest and each other, ids, the training CSR,
gates, and item_emb = item_base + gates . experts on a sample of items so
explanations add up. Optional per-item files (`service.item_files`, e.g.
item_names.json) are parsed when the manifest lists them. Any failure raises
`BundleError` naming the file. No pickle: arrays load with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle_format import (
    BUNDLE_FILES,
    FLOAT_ARRAYS,
    INDEX_FILE,
    MANIFEST,
    FormatError,
    check_array,
    check_csr,
    check_experts,
    check_gates,
    check_ids,
    check_invariant,
    check_manifest,
    invariant_rows,
    read_json,
    read_npy,
)
from service.item_files import ITEM_ATTRIBUTES, ITEM_COLD, ITEM_FILES, ITEM_NAMES, ItemFileError, parse_item_file

log = logging.getLogger(__name__)


class BundleError(ValueError):
    """A bundle that cannot be served; the message names the file and the problem."""


@dataclass(frozen=True)
class ExpertInfo:
    """One routing expert as the manifest describes it."""

    name: str
    role: str
    modality: str | None


@dataclass(frozen=True, eq=False)
class Bundle:
    """A verified bundle held in memory; immutable once loaded."""

    path: Path
    manifest: dict[str, Any]
    user_emb: np.ndarray
    item_emb: np.ndarray
    item_base: np.ndarray
    item_gates: np.ndarray
    item_experts: np.ndarray
    experts: tuple[ExpertInfo, ...]
    user_ids: list[str]
    item_ids: list[str]
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    popularity: np.ndarray
    index: Any = field(repr=False)
    #: optional per-item files the bundle carries (service.item_files), by file name
    item_files: dict[str, list[Any]] = field(default_factory=dict, repr=False)

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def model(self) -> str:
        return str(self.manifest["model"])

    @property
    def n_users(self) -> int:
        return int(self.user_emb.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_emb.shape[0])

    @property
    def dim(self) -> int:
        return int(self.item_emb.shape[1])

    @property
    def index_info(self) -> dict[str, Any]:
        return dict(self.manifest.get("index") or {"type": "flat", "exact": True})

    @property
    def item_names(self) -> list[str | None] | None:
        """Display name per internal item index, when the import had a title column."""
        return self.item_files.get(ITEM_NAMES)

    @property
    def item_attributes(self) -> list[dict[str, list[str]] | None] | None:
        """{attribute: [values]} per internal item index, when the import had --meta-cols."""
        return self.item_files.get(ITEM_ATTRIBUTES)

    def is_cold(self, item: int) -> bool:
        """True when the item was embedded from its content alone (`magnet add-items`)."""
        cold = self.item_files.get(ITEM_COLD)
        return bool(cold[item]) if cold is not None else False

    def seen(self, user: int) -> np.ndarray:
        """Internal item indices the user trained on (never recommended back)."""
        return self.seen_indices[self.seen_indptr[user]: self.seen_indptr[user + 1]]


def _read_verified(root: Path, name: str, expected: str) -> bytes:
    path = root / name
    if not path.is_file():
        raise BundleError(f"{path}: file listed in manifest.json is missing")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise BundleError(f"{path}: checksum mismatch (manifest {expected[:12]}..., file {actual[:12]}...)")
    return data


def _manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory does not exist")
    if not path.is_file():
        raise BundleError(f"{path}: missing (is {root} a bundle from `magnet export`?)")
    return check_manifest(read_json(path.read_bytes(), path), path)


def load_bundle(path: Path | str) -> Bundle:
    """Reads and verifies the bundle at `path`; raises BundleError naming the bad file."""
    try:
        return _load(Path(path))
    except FormatError as exc:
        raise BundleError(str(exc)) from exc


def _load(root: Path) -> Bundle:
    import faiss

    started = time.perf_counter()
    manifest = _manifest(root)
    blobs = {name: _read_verified(root, name, digest) for name, digest in manifest["files"].items()}
    dim, n_users, n_items = manifest["dim"], manifest["n_users"], manifest["n_items"]
    experts = tuple(ExpertInfo(**e) for e in check_experts(manifest["experts"], len(manifest["experts"]),
                                                            f"{root / MANIFEST} 'experts'"))
    n_exp = len(experts)

    arrays = {name: read_npy(blobs[name], root / name) for name in BUNDLE_FILES if name.endswith(".npy")}
    shapes = {"user_emb.npy": (n_users, dim), "item_emb.npy": (n_items, dim), "item_base.npy": (n_items, dim),
              "item_gates.npy": (n_items, n_exp), "item_experts.npy": (n_items, n_exp, dim)}
    for name, shape in shapes.items():
        check_array(arrays[name], root / name, shape=shape)
    check_array(arrays["popularity.npy"], root / "popularity.npy", shape=(n_items,), kinds="iuf")
    for name, shape in (manifest.get("shapes") or {}).items():
        if name in arrays and list(arrays[name].shape) != list(shape):
            raise BundleError(f"{root / name}: shape {arrays[name].shape} differs from manifest {shape}")
    indptr, indices = check_csr(arrays["seen_indptr.npy"], arrays["seen_indices.npy"], n_users, n_items,
                                root / "seen_indptr.npy", root / "seen_indices.npy")
    if arrays["popularity.npy"].size and arrays["popularity.npy"].min() < 0:
        raise BundleError(f"{root / 'popularity.npy'}: negative counts")

    user_ids = check_ids(read_json(blobs["user_ids.json"], root / "user_ids.json"), n_users, root / "user_ids.json")
    item_ids = check_ids(read_json(blobs["item_ids.json"], root / "item_ids.json"), n_items, root / "item_ids.json")
    try:
        item_files = {name: parse_item_file(name, blobs[name], n_items, root / name)
                      for name in ITEM_FILES if name in blobs}
    except ItemFileError as exc:
        raise BundleError(str(exc)) from None
    cold = item_files.get(ITEM_COLD)
    cold_count = sum(cold) if cold is not None else 0
    if manifest.get("cold_items", cold_count) != cold_count:
        raise BundleError(f"{root / MANIFEST}: cold_items is {manifest['cold_items']!r} but {ITEM_COLD} flags "
                          f"{cold_count} items")

    f32 = {name: np.ascontiguousarray(arrays[name], dtype=np.float32) for name in FLOAT_ARRAYS}
    check_gates(f32["item_gates.npy"], root / "item_gates.npy")
    check_invariant(f32["item_emb.npy"], f32["item_base.npy"], f32["item_gates.npy"], f32["item_experts.npy"],
                    root / "item_emb.npy", rows=invariant_rows(n_items))

    try:
        index = faiss.deserialize_index(np.frombuffer(blobs[INDEX_FILE], dtype=np.uint8))
    except Exception as exc:
        raise BundleError(f"{root / INDEX_FILE}: not a FAISS index ({exc})") from exc
    if index.d != dim or index.ntotal != n_items:
        raise BundleError(f"{root / INDEX_FILE}: index has d={index.d}, ntotal={index.ntotal}; "
                          f"expected d={dim}, ntotal={n_items}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise BundleError(f"{root / INDEX_FILE}: index metric is not inner product")

    for array in f32.values():
        array.setflags(write=False)
    bundle = Bundle(
        path=root.resolve(),
        manifest=manifest,
        user_emb=f32["user_emb.npy"],
        item_emb=f32["item_emb.npy"],
        item_base=f32["item_base.npy"],
        item_gates=f32["item_gates.npy"],
        item_experts=f32["item_experts.npy"],
        experts=experts,
        user_ids=user_ids,
        item_ids=item_ids,
        seen_indptr=indptr,
        seen_indices=indices,
        popularity=arrays["popularity.npy"],
        index=index,
        item_files=item_files,
    )
    log.info("bundle verified", extra={"bundle": str(root), "model_version": bundle.model_version,
                                       "n_users": n_users, "n_items": n_items,
                                       "seconds": round(time.perf_counter() - started, 3)})
    return bundle
