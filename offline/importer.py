"""`magnet import`: raw CSVs -> a dataset directory in MMRec layout.

Order of work (CONTRACT.md): parse and validate; drop ratings below --min-rating;
drop rows whose item is not in the items file; keep the earliest of duplicate
(user, item) rows; iterative k-core on users and items until stable; split (users
with fewer than 3 rows are dropped here, before numbering, so ids stay dense); number
users and items in the order of their external ids; build features; write
atomically.

External ids are compared as integers when every id of that kind in the file is an
integer (they are then written in canonical form, "007" -> "7"), else as strings.

Features: text columns become one string per item (:func:`offline.features.item_text`,
e.g. "Toy Story (1995). Animation, Children's, Comedy. A cowboy doll ...") encoded by
all-MiniLM-L6-v2 -> ``text_feat.npy``; meta columns become ``column=value`` tokens ->
TF-IDF + SVD -> ``meta_feat.npy``. This reproduces the shared ml100k/mmrec features.
What encoded them (columns, text encoder, meta vocabulary, idf, SVD components) is
recorded in ``DATA/encoders/`` (`offline.item_encoders`) so new items can be encoded
the same way later (`magnet add-items`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from offline.dataset import Dataset, DatasetError, check_name, write_dataset
from offline.features import META_DIM, encode_text, fit_meta, item_meta_tokens, item_text, split_multi
from offline.item_encoders import ItemEncoders
from service.item_files import ITEM_ATTRIBUTES, ITEM_NAMES

log = logging.getLogger(__name__)

LABEL_COL = "x_label"
INT_RE = r"[+-]?\d+"


# ----------------------------------------------------------------- the split rule


def _is_int_ids(values: pd.Series) -> bool:
    if pd.api.types.is_integer_dtype(values):
        return True
    return bool(len(values)) and bool(values.astype(str).str.strip().str.fullmatch(INT_RE).all())


def id_sort_key(values: pd.Series, as_int: bool | None = None) -> np.ndarray:
    """int64 codes ordering external ids: as integers when all are integers, else as strings."""
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(np.int64)
    if as_int is None:
        as_int = _is_int_ids(values)
    text = values.astype(str).str.strip()
    if as_int:
        try:
            return pd.to_numeric(text).to_numpy(np.int64)
        except (OverflowError, ValueError):  # beyond int64: order Python ints instead
            keys = text.map(int).to_numpy(dtype=object)
    else:
        keys = text.to_numpy(dtype=object)
    _, codes = np.unique(keys, return_inverse=True)
    return codes.astype(np.int64)


def assign_split(
    inter: pd.DataFrame,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    items_as_int: bool | None = None,
) -> np.ndarray:
    """x_label per row (aligned with ``inter``) by the contract's split rule.

    Per user, rows ordered by time, ties by item id (as integers when ``items_as_int``,
    auto-detected from the column when None). Fewer than 10 rows: last-but-one valid,
    last test, rest train. Otherwise floor(20%) held out, floor(half) of it valid, the
    rest (the latest) test. Users with fewer than 3 rows get -1 (to be dropped).
    """
    n = len(inter)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    user = id_sort_key(inter[user_col])
    item = id_sort_key(inter[item_col], items_as_int)
    time = pd.to_numeric(inter[time_col]).to_numpy()
    order = np.lexsort((item, time, user))  # last key is primary
    u_sorted = user[order]
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    counts = np.diff(np.r_[starts, n])
    cnt = np.repeat(counts, counts)
    pos = np.arange(n) - np.repeat(starts, counts)

    labels_sorted = np.zeros(n, dtype=np.int64)
    small = cnt < 10
    held = np.where(small, 2, cnt * 20 // 100)
    valid = np.where(small, 1, held // 2)
    first_held = cnt - held
    labels_sorted[pos >= first_held] = 1
    labels_sorted[pos >= first_held + valid] = 2
    labels_sorted[cnt < 3] = -1
    labels = np.empty(n, dtype=np.int64)
    labels[order] = labels_sorted
    return labels


# ----------------------------------------------------------------- reading CSVs


def read_table(path: Path, what: str, needed: list[str]) -> pd.DataFrame:
    """All columns as strings (ids stay exact); names the file and the missing columns."""
    if not path.exists():
        raise DatasetError(f"{what} file {path} does not exist")
    if not path.is_file():
        raise DatasetError(f"{what} file {path} is not a file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{path}: the file is empty") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path}: cannot parse as comma-separated CSV ({str(exc).splitlines()[0]})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        header = ",".join(df.columns)
        for sep, word in (("\t", "tab"), (";", "semicolon")):
            if len(df.columns) == 1 and sep in header:
                raise DatasetError(f"{path}: expected comma-separated CSV, but the header is {word}-separated")
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)}; the file has: {', '.join(df.columns)}"
        )
    if len(df) == 0:
        raise DatasetError(f"{path}: has a header but no rows")
    return df


def canonical_ints(ids: pd.Series) -> pd.Series:
    """Integer-looking ids in canonical form ("007" -> "7"), so both files agree on them."""
    is_int = ids.str.fullmatch(INT_RE).to_numpy(dtype=bool, na_value=False)
    if not is_int.any():
        return ids
    out = ids.copy()
    out[is_int] = ids[is_int].map(lambda v: str(int(v)))
    return out


def _ids(df: pd.DataFrame, col: str, path: Path) -> tuple[pd.Series, bool]:
    """Stripped external ids (canonical when all are integers) and whether all are integers."""
    ids = df[col].str.strip()
    empty = (ids == "").to_numpy()
    if empty.any():
        raise DatasetError(
            f"{path}: column {col} is empty on {int(empty.sum())} rows (e.g. line {int(np.argmax(empty)) + 2})"
        )
    as_int = bool(ids.str.fullmatch(INT_RE).all())
    return (canonical_ints(ids) if as_int else ids), as_int


def _numbers(df: pd.DataFrame, col: str, path: Path, what: str) -> pd.Series:
    values = pd.to_numeric(df[col].str.strip(), errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        first = int(np.argmax(bad))
        raise DatasetError(
            f"{path}: {what} column {col} must be numeric; {int(bad.sum())} rows are not "
            f"(e.g. {df[col].iloc[first]!r} on line {first + 2})"
        )
    return values


def _timestamps(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    """Numbers as they are; otherwise dates/times -> unix seconds."""
    raw = df[col].str.strip()
    values = pd.to_numeric(raw, errors="coerce")
    if values.isna().any():
        try:
            parsed = pd.to_datetime(raw, utc=True, format="mixed")
        except (ValueError, TypeError):
            parsed = None
        if parsed is None or parsed.isna().any():
            bad = values.isna().to_numpy()
            first = int(np.argmax(bad))
            raise DatasetError(
                f"{path}: time column {col} must hold numbers or dates; {int(bad.sum())} rows do not "
                f"(e.g. {df[col].iloc[first]!r} on line {first + 2})"
            )
        values = pd.Series((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1), index=df.index)
    return _maybe_int(values)


def _maybe_int(values: pd.Series) -> pd.Series:
    v = values.to_numpy()
    if np.issubdtype(v.dtype, np.floating) and np.all(v == np.round(v)) and np.all(np.abs(v) < 2**62):
        return pd.Series(v.astype(np.int64), index=values.index)
    return values


# ----------------------------------------------------------------- filtering


def kcore_filter(df: pd.DataFrame, k: int, user_col: str = "user", item_col: str = "item") -> pd.DataFrame:
    """Drops users and items with fewer than k rows, repeatedly, until none remain to drop."""
    if k <= 1:
        return df
    rounds = 0
    while True:
        rounds += 1
        users = df[user_col].map(df[user_col].value_counts())
        items = df[item_col].map(df[item_col].value_counts())
        keep = (users >= k) & (items >= k)
        if keep.all():
            break
        df = df[keep]
    log.info("%d-core: %d rows after %d round(s)", k, len(df), rounds)
    return df


@dataclass
class Prepared:
    """The interactions after filtering, numbering and splitting (no features yet)."""

    frame: pd.DataFrame  # user, item (external, str), userID, itemID, [rating], [timestamp], x_label
    user_ids: list[str]
    item_ids: list[str]
    items_table: pd.DataFrame | None  # items file rows indexed by canonical external item id


def prepare_interactions(
    interactions: Path,
    items: Path | None = None,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    rating_col: str = "rating",
    content_cols: list[str] | None = None,
    kcore: int = 5,
    min_rating: float | None = None,
) -> Prepared:
    """Everything `magnet import` does before features: the contract's order of work."""
    interactions = Path(interactions)
    content_cols = list(content_cols or [])
    if kcore < 0:
        raise DatasetError(f"--kcore must be >= 0, got {kcore}")
    if content_cols and items is None:
        raise DatasetError(f"--text-cols/--meta-cols ({', '.join(content_cols)}) need an --items file")
    raw = _read_interactions(interactions, user_col, item_col, time_col, rating_col, min_rating)
    df = raw.frame

    if min_rating is not None:
        n = len(df)
        df = df[df["rating"] >= min_rating]
        log.info("min rating %s: %d of %d rows kept", min_rating, len(df), n)
        _nonempty(df, interactions, f"dropping ratings below {min_rating}")

    items_table = None
    if items is not None:
        items_table = _read_items(Path(items), item_col, content_cols, raw.items_as_int)
        known = df["item"].isin(items_table.index)
        if not known.all():
            log.info("dropping %d rows whose item is not in %s", int((~known).sum()), Path(items).name)
        df = df[known]
        _nonempty(df, interactions, f"dropping items missing from {items}")

    df = df.sort_values(["timestamp", "_row"], kind="stable")
    n = len(df)
    df = df.drop_duplicates(["user", "item"], keep="first")
    if len(df) < n:
        log.info("dropped %d duplicate (user, item) rows, keeping the earliest", n - len(df))

    df = kcore_filter(df, kcore)
    _nonempty(df, interactions, f"the {kcore}-core filter")

    if LABEL_COL not in df.columns:
        df = df.assign(**{LABEL_COL: assign_split(df, user_col="user", item_col="item", items_as_int=raw.items_as_int)})
        dropped = df[LABEL_COL] < 0
        if dropped.any():
            log.info("dropping %d users with fewer than 3 rows", df.loc[dropped, "user"].nunique())
            df = df[~dropped]
        _nonempty(df, interactions, "dropping users with fewer than 3 rows")

    user_ids = _numbered(df["user"], raw.users_as_int)
    item_ids = _numbered(df["item"], raw.items_as_int)
    df = df.assign(
        userID=df["user"].map({e: i for i, e in enumerate(user_ids)}).astype(np.int64),
        itemID=df["item"].map({e: i for i, e in enumerate(item_ids)}).astype(np.int64),
    )
    df = df.drop(columns=["_row"] if raw.has_time else ["_row", "timestamp"]).reset_index(drop=True)
    for code, split in enumerate(("train", "valid", "test")):
        if not (df[LABEL_COL] == code).any():
            raise DatasetError(f"{interactions}: the {split} split is empty after filtering ({LABEL_COL} {code})")
    log.info("%d users, %d items, %d interactions after filtering", len(user_ids), len(item_ids), len(df))
    return Prepared(df, user_ids, item_ids, items_table)


@dataclass
class _Raw:
    frame: pd.DataFrame  # user, item, _row, timestamp, [rating], [x_label]
    users_as_int: bool
    items_as_int: bool
    has_time: bool


def _read_interactions(
    path: Path, user_col: str, item_col: str, time_col: str, rating_col: str, min_rating: float | None
) -> _Raw:
    """Parses and validates the interactions file into canonical columns."""
    head = read_table(path, "interactions", [user_col, item_col])
    has_label = LABEL_COL in head.columns
    has_time = time_col in head.columns
    columns = ", ".join(head.columns)
    if not has_time and not has_label:
        raise DatasetError(f"{path}: missing time column {time_col} (needed for the split); the file has: {columns}")
    if min_rating is not None and rating_col not in head.columns:
        raise DatasetError(f"{path}: --min-rating needs rating column {rating_col}; the file has: {columns}")

    users, users_as_int = _ids(head, user_col, path)
    items, items_as_int = _ids(head, item_col, path)
    df = pd.DataFrame({"user": users, "item": items, "_row": np.arange(len(head))})
    # without a time column (x_label given) file order stands in for time
    df["timestamp"] = _timestamps(head, time_col, path) if has_time else df["_row"]
    if rating_col in head.columns:
        if min_rating is not None or not pd.to_numeric(head[rating_col].str.strip(), errors="coerce").isna().any():
            df["rating"] = _maybe_int(_numbers(head, rating_col, path, "rating"))
        else:  # only --min-rating needs it; the .inter file may go without
            log.warning("%s: rating column %s is not numeric everywhere; leaving it out", path, rating_col)
    if has_label:
        labels = pd.to_numeric(head[LABEL_COL].str.strip(), errors="coerce")
        bad = ~labels.isin([0, 1, 2]).to_numpy()
        if bad.any():
            first = int(np.argmax(bad))
            raise DatasetError(
                f"{path}: {LABEL_COL} must be 0 (train), 1 (valid) or 2 (test); {int(bad.sum())} rows are not "
                f"(e.g. {head[LABEL_COL].iloc[first]!r} on line {first + 2})"
            )
        df[LABEL_COL] = labels.astype(np.int64)
    return _Raw(df, users_as_int, items_as_int, has_time)


def _read_items(path: Path, item_col: str, content_cols: list[str], items_as_int: bool) -> pd.DataFrame:
    """The items file indexed by external item id (canonical like the interactions' ids)."""
    table = read_table(path, "items", [item_col, *content_cols])
    ext, _ = _ids(table, item_col, path)
    if items_as_int:
        ext = canonical_ints(ext)
    dup = ext.duplicated()
    if dup.any():
        raise DatasetError(f"{path}: column {item_col} has {int(dup.sum())} duplicate ids (e.g. {ext[dup].iloc[0]!r})")
    return table.set_axis(ext.to_numpy(), axis=0)


def _nonempty(df: pd.DataFrame, path: Path, step: str) -> None:
    if len(df) == 0:
        raise DatasetError(f"{path}: no interactions left after {step}")


def _numbered(ext: pd.Series, as_int: bool) -> list[str]:
    """Unique external ids in the order that defines internal ids."""
    uniq = pd.Series(ext.unique())
    return [str(x) for x in uniq.iloc[np.argsort(id_sort_key(uniq, as_int), kind="stable")]]


# ----------------------------------------------------------------- the command


TextEncoder = Callable[[list[str]], np.ndarray]


def import_dataset(
    interactions: Path,
    items: Path | None = None,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    rating_col: str = "rating",
    text_cols: list[str] | None = None,
    meta_cols: list[str] | None = None,
    title_col: str | None = None,
    kcore: int = 5,
    min_rating: float | None = None,
    name: str,
    out: Path,
    meta_dim: int = META_DIM,
    text_encoder: TextEncoder | None = None,
) -> Dataset:
    """`magnet import`: CSVs -> dataset directory at ``out`` (atomic); returns the Dataset.

    ``text_encoder`` replaces all-MiniLM-L6-v2 (texts -> float32 [n, d]); tests use it
    to reuse one encoding. ``title_col`` names the items file's display-name column
    (default: a column named ``title`` or ``name``, if any) -> ``item_names.json``.
    """
    text_cols, meta_cols = list(text_cols or []), list(meta_cols or [])
    check_name(name)  # fail before any work
    if title_col is not None and items is None:
        raise DatasetError(f"--title-col {title_col} needs an --items file")
    prep = prepare_interactions(
        Path(interactions), Path(items) if items is not None else None,
        user_col=user_col, item_col=item_col, time_col=time_col, rating_col=rating_col,
        content_cols=list(dict.fromkeys(text_cols + meta_cols + ([title_col] if title_col else []))),
        kcore=kcore, min_rating=min_rating,
    )
    features: dict[str, np.ndarray] = {}
    stats: dict[str, object] = {}
    item_files: dict[str, list] = {}
    encoders: ItemEncoders | None = None
    if prep.items_table is not None:
        rows = prep.items_table.loc[prep.item_ids]
        title = title_col or default_title_col(list(rows.columns), exclude=item_col)
        encoders = ItemEncoders(item_col=item_col, title_col=title, text_cols=text_cols, meta_cols=meta_cols,
                                meta_dim=meta_dim)
        if title is not None:
            item_files[ITEM_NAMES] = item_names(rows[title])
            log.info("display names from column %s (%d of %d items have one)", title,
                     sum(n is not None for n in item_files[ITEM_NAMES]), len(rows))
        if text_cols:
            texts = [item_text(v) for v in rows[text_cols].itertuples(index=False)]
            blank = sum(not t for t in texts)
            if blank:
                log.warning("%d items have no text in %s", blank, ", ".join(text_cols))
            features["text"] = (text_encoder or encode_text)(texts)
            encoders.text_dim = int(np.asarray(features["text"]).shape[1])
        if meta_cols:
            tokens = [item_meta_tokens(meta_cols, v) for v in rows[meta_cols].itertuples(index=False)]
            features["meta"], encoders.meta = fit_meta(tokens, meta_dim)
            stats["meta_vocab"] = len(encoders.meta.vocab)
            item_files[ITEM_ATTRIBUTES] = item_attributes(meta_cols, rows[meta_cols])
    if not features:
        log.warning("no --text-cols/--meta-cols: the dataset has no content features")

    df = prep.frame
    pairs = {code: df.loc[df[LABEL_COL] == code, ["userID", "itemID"]].to_numpy(np.int64) for code in (0, 1, 2)}
    ds = Dataset(
        name=name,
        n_users=len(prep.user_ids),
        n_items=len(prep.item_ids),
        train=pairs[0],
        valid=pairs[1],
        test=pairs[2],
        features=dict(sorted(features.items())),
        user_ids=prep.user_ids,
        item_ids=prep.item_ids,
    )
    extra_cols = ["userID", "itemID", *[c for c in ("rating", "timestamp") if c in df.columns]]
    write_dataset(ds, Path(out), extra=df[extra_cols], stats=stats, item_files=item_files,
                  write_extra=encoders.write if encoders is not None and features else None)
    return ds


TITLE_COLUMNS = ("title", "name")


def default_title_col(columns: list[str], *, exclude: str) -> str | None:
    """The items file's display-name column when none is named: `title`, else `name`
    (case-insensitive), never the item id column."""
    by_lower = {c.lower(): c for c in reversed(columns) if c != exclude}
    return next((by_lower[c] for c in TITLE_COLUMNS if c in by_lower), None)


def item_attributes(columns: list[str], rows: pd.DataFrame) -> list[dict[str, list[str]]]:
    """Per item, {column: its values} for the --meta-cols (multi-valued cells split on ``|``,
    as the meta features split them): what /recommend's ``filter`` matches."""
    return [{col: split_multi(cell) for col, cell in zip(columns, values)}
            for values in rows.itertuples(index=False)]


def item_names(values: pd.Series) -> list[str | None]:
    """One display name per item, in item order; blank -> null."""
    return [v.strip() or None for v in values.astype(str)]

