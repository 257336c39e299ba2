"""Loading a serving bundle and refusing any that fails verification.

Every file named in ``manifest.json["files"]`` is read once into memory, its sha256
checked against the manifest, and only then parsed (so what was verified is what is
served, even if the directory is replaced mid-load). Shapes are cross-checked
against the manifest and each other, and a sample of items is checked against
item_emb = item_base + gates . experts so explanations add up. Any failure raises
`BundleError` naming the file. No pickle: arrays load with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SUPPORTED_FORMATS = {1}
ROLES = ("dominant", "balanced", "complementary")
REQUIRED_FILES = (
    "user_emb.npy",
    "item_emb.npy",
    "item_base.npy",
    "item_gates.npy",
    "item_experts.npy",
    "user_ids.json",
    "item_ids.json",
    "seen_indptr.npy",
    "seen_indices.npy",
    "popularity.npy",
    "items.faiss",
)
REQUIRED_KEYS = ("format_version", "model_version", "created_at", "model", "dim", "n_users", "n_items",
                 "experts", "metrics", "files")
INVARIANT_SAMPLE = 2048
INVARIANT_RTOL = 1e-4


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


def _npy(root: Path, name: str, data: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise BundleError(f"{root / name}: not a plain .npy array ({exc})") from exc
    if not isinstance(array, np.ndarray):
        raise BundleError(f"{root / name}: not a single .npy array")
    return array


def _expect(root: Path, name: str, array: np.ndarray, shape: tuple[int, ...], kinds: str) -> None:
    if array.shape != shape:
        raise BundleError(f"{root / name}: shape {array.shape}, expected {shape}")
    if array.dtype.kind not in kinds:
        raise BundleError(f"{root / name}: dtype {array.dtype} is not allowed here")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BundleError(f"{root / name}: contains NaN or infinite values")


def _ids(root: Path, name: str, data: bytes, expected: int) -> list[str]:
    try:
        ids = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{root / name}: not valid JSON ({exc})") from exc
    if not isinstance(ids, list) or not all(isinstance(v, str) for v in ids):
        raise BundleError(f"{root / name}: expected a JSON list of string ids")
    if len(ids) != expected:
        raise BundleError(f"{root / name}: {len(ids)} ids, manifest says {expected}")
    if len(set(ids)) != len(ids):
        raise BundleError(f"{root / name}: duplicate ids")
    return ids


def _manifest(root: Path) -> dict[str, Any]:
    path = root / "manifest.json"
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory does not exist")
    if not path.is_file():
        raise BundleError(f"{path}: missing (is {root} a bundle from `magnet export`?)")
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{path}: missing keys {missing}")
    if manifest["format_version"] not in SUPPORTED_FORMATS:
        raise BundleError(f"{path}: format_version {manifest['format_version']!r} is not supported "
                          f"(this server reads {sorted(SUPPORTED_FORMATS)})")
    for key in ("dim", "n_users", "n_items"):
        if not isinstance(manifest[key], int) or isinstance(manifest[key], bool) or manifest[key] <= 0:
            raise BundleError(f"{path}: {key} must be a positive integer")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise BundleError(f"{path}: 'files' must map file names to sha256 hex digests")
    absent = [f for f in REQUIRED_FILES if f not in files]
    if absent:
        raise BundleError(f"{path}: 'files' does not list {absent}")
    for name in files:
        if Path(name).name != name or name in ("", ".", ".."):
            raise BundleError(f"{path}: file name {name!r} must be a plain name inside the bundle")
    if not isinstance(manifest["model_version"], str) or not manifest["model_version"]:
        raise BundleError(f"{path}: model_version must be a non-empty string")
    return manifest


def _experts(root: Path, manifest: dict[str, Any]) -> tuple[ExpertInfo, ...]:
    raw = manifest["experts"]
    if not isinstance(raw, list):
        raise BundleError(f"{root / 'manifest.json'}: 'experts' must be a list")
    out = []
    for n, e in enumerate(raw):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or e.get("role") not in ROLES:
            raise BundleError(f"{root / 'manifest.json'}: expert #{n} needs a name and a role in {ROLES}")
        modality = e.get("modality")
        if modality is not None and not isinstance(modality, str):
            raise BundleError(f"{root / 'manifest.json'}: expert {e['name']!r} has a non-string modality")
        out.append(ExpertInfo(e["name"], e["role"], modality))
    return tuple(out)


def _check_invariant(root: Path, item_emb: np.ndarray, base: np.ndarray, gates: np.ndarray,
                     experts: np.ndarray) -> None:
    n = item_emb.shape[0]
    rows = np.arange(n) if n <= INVARIANT_SAMPLE else np.random.default_rng(0).choice(n, INVARIANT_SAMPLE, replace=False)
    recon = base[rows].astype(np.float64)
    if gates.shape[1]:
        recon += np.einsum("ie,ied->id", gates[rows].astype(np.float64), experts[rows].astype(np.float64))
    worst = float(np.abs(item_emb[rows] - recon).max(initial=0.0))
    scale = max(float(np.abs(item_emb).max(initial=0.0)), 1.0)
    if worst > INVARIANT_RTOL * scale:
        raise BundleError(f"{root / 'item_emb.npy'}: differs from item_base + gates . experts by {worst:.3g}")


def load_bundle(path: Path | str) -> Bundle:
    """Reads and verifies the bundle at `path`; raises BundleError naming the bad file."""
    import faiss

    started = time.perf_counter()
    root = Path(path)
    manifest = _manifest(root)
    files = manifest["files"]
    blobs = {name: _read_verified(root, name, digest) for name, digest in files.items()}
    dim, n_users, n_items = manifest["dim"], manifest["n_users"], manifest["n_items"]
    experts = _experts(root, manifest)
    n_exp = len(experts)

    arrays = {name: _npy(root, name, blobs[name]) for name in REQUIRED_FILES if name.endswith(".npy")}
    _expect(root, "user_emb.npy", arrays["user_emb.npy"], (n_users, dim), "f")
    _expect(root, "item_emb.npy", arrays["item_emb.npy"], (n_items, dim), "f")
    _expect(root, "item_base.npy", arrays["item_base.npy"], (n_items, dim), "f")
    _expect(root, "item_gates.npy", arrays["item_gates.npy"], (n_items, n_exp), "f")
    _expect(root, "item_experts.npy", arrays["item_experts.npy"], (n_items, n_exp, dim), "f")
    _expect(root, "seen_indptr.npy", arrays["seen_indptr.npy"], (n_users + 1,), "iu")
    n_seen = arrays["seen_indices.npy"].shape[0] if arrays["seen_indices.npy"].ndim == 1 else -1
    _expect(root, "seen_indices.npy", arrays["seen_indices.npy"], (max(n_seen, 0),), "iu")
    _expect(root, "popularity.npy", arrays["popularity.npy"], (n_items,), "iuf")
    shapes = manifest.get("shapes") or {}
    for name, shape in shapes.items():
        if name in arrays and list(arrays[name].shape) != list(shape):
            raise BundleError(f"{root / name}: shape {arrays[name].shape} differs from manifest {shape}")

    indptr = arrays["seen_indptr.npy"].astype(np.int64)
    indices = arrays["seen_indices.npy"].astype(np.int64)
    if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
        raise BundleError(f"{root / 'seen_indptr.npy'}: not a valid CSR row pointer for seen_indices.npy")
    if indices.size and (indices.min() < 0 or indices.max() >= n_items):
        raise BundleError(f"{root / 'seen_indices.npy'}: item indices outside [0, {n_items})")
    if arrays["popularity.npy"].size and arrays["popularity.npy"].min() < 0:
        raise BundleError(f"{root / 'popularity.npy'}: negative counts")

    user_ids = _ids(root, "user_ids.json", blobs["user_ids.json"], n_users)
    item_ids = _ids(root, "item_ids.json", blobs["item_ids.json"], n_items)

    f32 = {name: np.ascontiguousarray(arrays[name], dtype=np.float32)
           for name in ("user_emb.npy", "item_emb.npy", "item_base.npy", "item_gates.npy", "item_experts.npy")}
    _check_invariant(root, f32["item_emb.npy"], f32["item_base.npy"], f32["item_gates.npy"], f32["item_experts.npy"])

    try:
        index = faiss.deserialize_index(np.frombuffer(blobs["items.faiss"], dtype=np.uint8))
    except Exception as exc:
        raise BundleError(f"{root / 'items.faiss'}: not a FAISS index ({exc})") from exc
    if index.d != dim or index.ntotal != n_items:
        raise BundleError(f"{root / 'items.faiss'}: index has d={index.d}, ntotal={index.ntotal}; "
                          f"expected d={dim}, ntotal={n_items}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise BundleError(f"{root / 'items.faiss'}: index metric is not inner product")

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
    )
    log.info("bundle verified", extra={"bundle": str(root), "model_version": bundle.model_version,
                                       "n_users": n_users, "n_items": n_items,
                                       "seconds": round(time.perf_counter() - started, 3)})
    return bundle
