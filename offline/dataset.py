"""The dataset directory (MMRec layout) and its in-memory form.

A dataset directory holds exactly one ``<name>.inter`` (tab-separated, header
``userID itemID [rating] [timestamp] x_label``), any number of
``<modality>_feat.npy`` (float32 [n_items, d], row = itemID) and, optionally,
``u_id_mapping.csv`` / ``i_id_mapping.csv`` (tab-separated, header, external id then
internal id) plus ``stats.json``. MMRec's published Amazon datasets load unchanged.

Everything that can be wrong with such a directory raises :class:`DatasetError`
with one line naming the file and the problem, so the CLI can print it as is.

Writing is atomic: :func:`write_dataset` fills a hidden sibling directory (the
``.inter`` file last) and publishes it with `offline.publish`, so a crash never
leaves a half-written directory under the final name.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from offline.publish import staged
from service.item_files import ITEM_FILES, ItemFileError, check_item_file, write_item_files

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
REQUIRED_INTER_COLUMNS = ("userID", "itemID", "x_label")
OPTIONAL_INTER_COLUMNS = ("rating", "timestamp")
USER_MAPPING = "u_id_mapping.csv"
ITEM_MAPPING = "i_id_mapping.csv"
STATS_FILE = "stats.json"
#: subdirectory of recorded item encoders (offline/item_encoders.py), the one directory a dataset may hold
ENCODERS_DIR = "encoders"
FEATURE_SUFFIX = "_feat.npy"
_FINITE_CHECK_ROWS = 8192  # rows per chunk when scanning big feature files for NaN/inf


class DatasetError(ValueError):
    """A dataset file or directory is missing or malformed; the message names which and why."""


@dataclass
class Dataset:
    """Interactions split into train/valid/test plus per-item content features.

    All ids inside are internal (dense from 0); ``user_ids`` / ``item_ids`` give the
    external id of each internal one.
    """

    name: str
    n_users: int
    n_items: int
    train: np.ndarray  # int64 [n, 2] (internal user, internal item)
    valid: np.ndarray  # int64 [n, 2]
    test: np.ndarray  # int64 [n, 2]
    features: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> float32 [n_items, d]
    user_ids: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)

    def train_matrix(self) -> sp.csr_matrix:
        """n_users x n_items CSR with 1.0 where the user has a training interaction."""
        n = len(self.train)
        m = sp.csr_matrix(
            (np.ones(n, dtype=np.float32), (self.train[:, 0], self.train[:, 1])),
            shape=(self.n_users, self.n_items),
        )
        m.sum_duplicates()
        m.data[:] = 1.0  # a repeated pair still counts once
        return m

    def item_popularity(self) -> np.ndarray:
        """Training interactions per item (int64 [n_items]); the popularity baseline and fallback."""
        return np.bincount(self.train[:, 1], minlength=self.n_items).astype(np.int64)

    @property
    def n_interactions(self) -> int:
        return len(self.train) + len(self.valid) + len(self.test)

    def summary(self) -> dict[str, Any]:
        """Sizes worth logging or writing to stats.json (same keys as the shared ml100k stats)."""
        out: dict[str, Any] = {
            "users": int(self.n_users),
            "items": int(self.n_items),
            "interactions": int(self.n_interactions),
            "density": self.n_interactions / max(1, self.n_users * self.n_items),
            "split": [len(self.train), len(self.valid), len(self.test)],
        }
        for modality, feat in sorted(self.features.items()):
            out[f"{modality}_feat"] = list(feat.shape)
        return out

    def validate(self, where: str | None = None) -> None:
        """Raises DatasetError unless shapes, id ranges, id lists and features agree."""
        where = where or f"dataset {self.name!r}"
        check_name(self.name)
        if self.n_users <= 0 or self.n_items <= 0:
            raise DatasetError(f"{where}: needs at least one user and one item (got {self.n_users} / {self.n_items})")
        for split in SPLITS:
            pairs = getattr(self, split)
            if not isinstance(pairs, np.ndarray) or pairs.ndim != 2 or pairs.shape[1] != 2:
                got = getattr(pairs, "shape", type(pairs).__name__)
                raise DatasetError(f"{where}: {split} must be an int array [n, 2], got {got}")
            if len(pairs) == 0:
                raise DatasetError(f"{where}: the {split} split is empty")
            if not np.issubdtype(pairs.dtype, np.integer):
                raise DatasetError(f"{where}: {split} must hold integer ids, got {pairs.dtype}")
            for col, (kind, n) in enumerate((("user", self.n_users), ("item", self.n_items))):
                lo, hi = int(pairs[:, col].min()), int(pairs[:, col].max())
                if lo < 0 or hi >= n:
                    raise DatasetError(f"{where}: {split} has {kind} ids in {lo}..{hi}, outside 0..{n - 1}")
        for kind, ids, n in (("user_ids", self.user_ids, self.n_users), ("item_ids", self.item_ids, self.n_items)):
            if len(ids) != n:
                raise DatasetError(f"{where}: {kind} has {len(ids)} entries for {n} ids")
            if len(set(ids)) != len(ids):
                raise DatasetError(f"{where}: {kind} has duplicate external ids")
        for modality, feat in self.features.items():
            _check_feature(feat, self.n_items, f"{where}: {modality} features")


# --------------------------------------------------------------------- loading


def load_dataset(path: Path | str) -> Dataset:
    """Reads and validates a dataset directory (MMRec layout)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset directory {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{path} is not a directory (expected a dataset directory in MMRec layout)")
    inter_path = _find_inter(path)
    inter = _read_inter(inter_path)

    user_map = _read_mapping(path / USER_MAPPING)
    item_map = _read_mapping(path / ITEM_MAPPING)
    n_users = _check_ids(inter, "userID", inter_path, user_map, path / USER_MAPPING)
    n_items = _check_ids(inter, "itemID", inter_path, item_map, path / ITEM_MAPPING)

    pairs = inter[["userID", "itemID"]].to_numpy(np.int64)
    labels = inter["x_label"].to_numpy()
    splits = {}
    for code, split in enumerate(SPLITS):
        splits[split] = np.ascontiguousarray(pairs[labels == code])
        if len(splits[split]) == 0:
            raise DatasetError(f"{inter_path}: the {split} split is empty (no rows with x_label {code})")

    features = {}
    for feat_path in sorted(path.glob(f"*{FEATURE_SUFFIX}")):
        modality = feat_path.name[: -len(FEATURE_SUFFIX)]
        if not modality:
            raise DatasetError(f"{feat_path}: feature files are named <modality>{FEATURE_SUFFIX}")
        features[modality] = _load_feature(feat_path, n_items)
    if not features:
        log.warning("%s has no <modality>%s files: only collaborative models can use it", path, FEATURE_SUFFIX)

    ds = Dataset(
        name=inter_path.stem,
        n_users=n_users,
        n_items=n_items,
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        features=features,
        user_ids=user_map if user_map is not None else [str(u) for u in range(n_users)],
        item_ids=item_map if item_map is not None else [str(i) for i in range(n_items)],
    )
    log.info(
        "loaded %s: %d users, %d items, %d/%d/%d train/valid/test, features %s",
        ds.name, n_users, n_items, len(ds.train), len(ds.valid), len(ds.test),
        {m: f.shape[1] for m, f in features.items()},
    )
    return ds


def _find_inter(path: Path) -> Path:
    found = sorted(path.glob("*.inter"))
    if not found:
        raise DatasetError(f"{path}: no <name>.inter file (expected exactly one, tab-separated)")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DatasetError(f"{path}: {len(found)} .inter files ({names}); expected exactly one")
    return found[0]


def _header_line(file: Path) -> str:
    try:
        with file.open("r", encoding="utf-8", newline="") as fh:
            return fh.readline().rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DatasetError(f"{file}: cannot read ({exc.strerror})") from exc


def _check_tab_header(file: Path, header: str, required: tuple[str, ...]) -> None:
    """Catches the common mistake of a comma- or semicolon-separated file up front."""
    if not header:
        raise DatasetError(f"{file}: empty file (expected a tab-separated header {' '.join(required)})")
    if "\t" not in header:
        for sep, word in ((",", "comma"), (";", "semicolon")):
            if sep in header:
                raise DatasetError(f"{file}: expected tab-separated columns, but the header is {word}-separated")


def _read_inter(file: Path) -> pd.DataFrame:
    header = _header_line(file)
    _check_tab_header(file, header, REQUIRED_INTER_COLUMNS)
    columns = [c.strip() for c in header.split("\t")]
    missing = [c for c in REQUIRED_INTER_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"{file}: missing column(s) {', '.join(missing)} (found {', '.join(columns)}; "
            f"expected {' '.join(REQUIRED_INTER_COLUMNS)} plus optional rating, timestamp)"
        )
    cols = list(REQUIRED_INTER_COLUMNS)
    try:
        out = pd.read_csv(file, sep="\t", usecols=cols)
        if not all(pd.api.types.is_integer_dtype(out[c]) for c in cols):
            # slow path only to name the offending line precisely
            raw = pd.read_csv(file, sep="\t", usecols=cols, dtype=str, keep_default_na=False)
            out = pd.DataFrame({c: _int_column(raw[c], c, file) for c in cols})
    except DatasetError:
        raise
    except (ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{file}: cannot parse as tab-separated ({str(exc).splitlines()[0]})") from exc
    out = out.astype(np.int64)
    bad = ~out["x_label"].isin((0, 1, 2))
    if bad.any():
        first = int(np.argmax(bad.to_numpy()))
        raise DatasetError(
            f"{file}: x_label must be 0 (train), 1 (valid) or 2 (test); {int(bad.sum())} rows are not "
            f"(e.g. {out['x_label'].iloc[first]} on line {first + 2})"
        )
    return out


def _int_column(values: pd.Series, column: str, file: Path) -> pd.Series:
    """Strict integer parse; names the first offending line (header is line 1)."""
    stripped = values.str.strip()
    ok = stripped.str.fullmatch(r"[+-]?\d+").to_numpy(dtype=bool, na_value=False)
    if not ok.all():
        first = int(np.argmin(ok))
        raise DatasetError(
            f"{file}: column {column} must hold integers; {int((~ok).sum())} rows do not "
            f"(e.g. {values.iloc[first]!r} on line {first + 2})"
        )
    try:
        return stripped.astype(np.int64)
    except (OverflowError, ValueError) as exc:
        raise DatasetError(f"{file}: column {column} has integers too large for int64") from exc


def _read_mapping(file: Path) -> list[str] | None:
    """External ids indexed by internal id, or None when the optional file is absent."""
    if not file.exists():
        return None
    header = _header_line(file)
    _check_tab_header(file, header, ("external", "internal"))
    try:
        df = pd.read_csv(file, sep="\t", dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{file}: cannot parse as tab-separated ({str(exc).splitlines()[0]})") from exc
    if df.shape[1] != 2:
        raise DatasetError(f"{file}: expected 2 tab-separated columns (external id, internal id), found {df.shape[1]}")
    if len(df) == 0:
        raise DatasetError(f"{file}: has a header but no rows")
    internal = _int_column(df.iloc[:, 1], str(df.columns[1]), file).to_numpy()
    n = len(df)
    if internal.min() < 0 or internal.max() >= n or len(np.unique(internal)) != n:
        raise DatasetError(f"{file}: internal ids (2nd column) must be 0..{n - 1}, each exactly once")
    external = df.iloc[:, 0].to_numpy(dtype=object)
    if len(set(external)) != n:
        raise DatasetError(f"{file}: external ids (1st column) are not unique")
    ids = [""] * n
    for ext, i in zip(external, internal):
        ids[int(i)] = str(ext)
    return ids


def _check_ids(inter: pd.DataFrame, column: str, file: Path, mapping: list[str] | None, map_file: Path) -> int:
    """Returns the id count (mapping length, else max+1) after checking the ids fit it."""
    ids = inter[column].to_numpy()
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0:
        raise DatasetError(f"{file}: {column} must be dense from 0, found {lo}")
    if mapping is not None:
        n = len(mapping)
        if hi >= n:
            raise DatasetError(f"{file}: {column} {hi} is out of range: {map_file.name} maps only 0..{n - 1}")
        unseen = n - len(np.unique(ids))
        if unseen:
            log.info("%s: %d of %d %ss in %s have no interactions", file.name, unseen, n, column, map_file.name)
        return n
    n = hi + 1
    present = np.zeros(n, dtype=bool)
    present[ids] = True
    if not present.all():
        gap = int(np.argmin(present))
        raise DatasetError(
            f"{file}: {column} is not dense from 0: {int((~present).sum())} of the ids 0..{hi} never occur "
            f"(e.g. {gap}) and there is no {map_file.name}"
        )
    return n


def _load_feature(file: Path, n_items: int) -> np.ndarray:
    try:
        feat = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{file}: cannot read as a .npy array ({str(exc).splitlines()[0]})") from exc
    return _check_feature(feat, n_items, str(file))


def _check_feature(feat: Any, n_items: int, where: str) -> np.ndarray:
    """float32 [n_items, d] with finite values; float16/64 are cast, anything else refused."""
    if not isinstance(feat, np.ndarray):
        raise DatasetError(f"{where}: expected a numpy array, got {type(feat).__name__}")
    if feat.ndim != 2:
        raise DatasetError(f"{where}: expected a 2-D array [n_items, d], got shape {list(feat.shape)}")
    if not np.issubdtype(feat.dtype, np.floating):
        raise DatasetError(f"{where}: expected float32 values, got {feat.dtype}")
    if feat.shape[0] != n_items:
        raise DatasetError(f"{where}: has {feat.shape[0]} rows but the dataset has {n_items} items (row = itemID)")
    if feat.shape[1] == 0:
        raise DatasetError(f"{where}: has 0 columns")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported below
        feat = np.ascontiguousarray(feat, dtype=np.float32)
    bad_rows = 0
    first_bad = -1
    for start in range(0, len(feat), _FINITE_CHECK_ROWS):
        bad = ~np.isfinite(feat[start : start + _FINITE_CHECK_ROWS]).all(axis=1)
        if bad.any():
            if first_bad < 0:
                first_bad = start + int(np.argmax(bad))
            bad_rows += int(bad.sum())
    if bad_rows:
        raise DatasetError(f"{where}: {bad_rows} of {len(feat)} rows contain NaN or inf (e.g. row {first_bad})")
    return feat


# --------------------------------------------------------------------- writing

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DATASET_FILE_RE = re.compile(
    rf"(.+\.inter|.+{re.escape(FEATURE_SUFFIX)}|{USER_MAPPING}|{ITEM_MAPPING}|{STATS_FILE}"
    rf"|{'|'.join(re.escape(name) for name in ITEM_FILES)})"
)


def check_name(name: str) -> None:
    """A dataset name must be a plain file stem (it names <name>.inter)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise DatasetError(
            f"dataset name {name!r} is not usable as a file name "
            "(letters, digits, '.', '_', '-'; not starting with '.')"
        )


def looks_like_dataset_dir(path: Path) -> bool:
    """True for an empty directory or one holding only dataset files (what we may replace)."""
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    return all((e.is_file() and _DATASET_FILE_RE.fullmatch(e.name)) or (e.is_dir() and e.name == ENCODERS_DIR)
               for e in entries) and (
        not entries or sum(e.suffix == ".inter" for e in entries) == 1
    )


def write_dataset(
    ds: Dataset,
    out: Path | str,
    *,
    extra: pd.DataFrame | None = None,
    stats: dict[str, Any] | None = None,
    item_files: dict[str, list[Any]] | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> None:
    """Writes ``ds`` as a dataset directory at ``out``, atomically.

    ``extra`` adds per-interaction columns to the .inter file: a frame with columns
    ``userID``, ``itemID`` (internal ids, one row per interaction) and any of
    ``rating`` / ``timestamp``. Rows are written per user ordered by timestamp (when
    given), then itemID. ``stats`` adds keys to stats.json. ``item_files`` adds optional
    per-item files (`service.item_files`, e.g. ``item_names.json``), checked first.
    ``write_extra(tmp)`` writes more into the staged directory before it is published
    (`magnet import`: the item encoders, ``encoders/``).

    An existing ``out`` is replaced only when it looks like a dataset directory
    (empty, or only .inter / *_feat.npy / id mappings / stats.json, one .inter);
    anything else is refused with DatasetError, so a typo cannot wipe a directory.
    """
    out = Path(out)
    ds.validate()
    if out.exists() and not looks_like_dataset_dir(out):
        what = "a file" if not out.is_dir() else "a directory that does not look like a dataset directory"
        raise DatasetError(f"refusing to replace {out}: it is {what}; remove it or choose another --out")
    inter = _inter_frame(ds, extra)
    for name, value in (item_files or {}).items():
        try:
            check_item_file(name, value, ds.n_items)
        except ItemFileError as exc:
            raise DatasetError(f"write_dataset: {exc}") from None
    with staged(out) as tmp:
        for modality, feat in sorted(ds.features.items()):
            np.save(tmp / f"{modality}{FEATURE_SUFFIX}", np.ascontiguousarray(feat, dtype=np.float32))
        _write_mapping(tmp / USER_MAPPING, ds.user_ids, ("user_id", "userID"))
        _write_mapping(tmp / ITEM_MAPPING, ds.item_ids, ("item_id", "itemID"))
        (tmp / STATS_FILE).write_text(json.dumps({**ds.summary(), **(stats or {})}, indent=1))
        write_item_files(tmp, item_files or {})
        if write_extra is not None:
            write_extra(tmp)
        inter.to_csv(tmp / f"{ds.name}.inter", sep="\t", index=False)  # last: a partial dir has no .inter
    log.info("wrote dataset %s to %s (%d interactions)", ds.name, out, len(inter))


def _inter_frame(ds: Dataset, extra: pd.DataFrame | None) -> pd.DataFrame:
    parts = [
        pd.DataFrame({"userID": pairs[:, 0].astype(np.int64), "itemID": pairs[:, 1].astype(np.int64), "x_label": code})
        for code, pairs in enumerate((ds.train, ds.valid, ds.test))
    ]
    inter = pd.concat(parts, ignore_index=True)
    if extra is not None:
        cols = [c for c in OPTIONAL_INTER_COLUMNS if c in extra.columns]
        if not {"userID", "itemID"} <= set(extra.columns):
            raise DatasetError("write_dataset: extra needs userID and itemID columns")
        try:
            inter = inter.merge(
                extra[["userID", "itemID", *cols]], on=["userID", "itemID"], how="left", validate="one_to_one"
            )
        except pd.errors.MergeError as exc:
            raise DatasetError("write_dataset: extra must have exactly one row per (userID, itemID)") from exc
        if inter[cols].isna().any().any():
            raise DatasetError("write_dataset: extra lacks rating/timestamp for some interactions")
        inter = inter[["userID", "itemID", *cols, "x_label"]]
    order = ["userID", "timestamp", "itemID"] if "timestamp" in inter.columns else ["userID", "itemID"]
    return inter.sort_values(order, kind="stable").reset_index(drop=True)


def _write_mapping(file: Path, ids: list[str], header: tuple[str, str]) -> None:
    ext = [str(x) for x in ids]
    if any(("\t" in x or "\n" in x or "\r" in x) for x in ext):
        raise DatasetError(f"{file.name}: external ids must not contain tabs or newlines")
    pd.DataFrame({header[0]: ext, header[1]: np.arange(len(ext), dtype=np.int64)}).to_csv(file, sep="\t", index=False)
