"""`magnet add-items`: new items from their content alone -> a complete serving bundle.

    magnet add-items --run RUN --items CSV [--replace] --out BUNDLE

1. RUN must be a MAGNET run (the only model with a content path) whose dataset
   directory still exists and holds the encoders `magnet import` recorded
   (``DATA/encoders/``, `offline.item_encoders`).
2. The items CSV is read like the import's items file: the recorded id column and
   every recorded content column must be there; ids are unique in the file; every
   item has content in each modality (text columns not all empty, at least one meta
   value). Ids the run already has are refused unless ``--replace`` (the item then
   keeps its row, its users' training history and its popularity, and is embedded
   from content like the new ones).
3. The items are encoded with the recorded encoders and embedded by
   `MAGNET.content_path` from the run's best weights (item base c, gates, every
   expert: e = c + sum g x, so explanations add up).
4. The run's arrays plus the new rows are written as a bundle by `offline.export`'s
   writer (new model_version, verified by the service's loader, published
   atomically), with ``item_cold.json`` (one flag per item) and manifest
   ``cold_items``. Any error above leaves no bundle behind.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from offline.config import ConfigError, load_config
from offline.dataset import DatasetError, load_dataset
from offline.export import EXACT_MAX_ITEMS, ExportError, check_bundle_out, read_run_arrays, write_bundle
from offline.features import item_meta_tokens, item_text
from offline.importer import INT_RE, canonical_ints, item_attributes, read_table
from offline.item_encoders import ItemEncoders, TextEncoder
from service import bundle_format as fmt
from service.item_files import ITEM_ATTRIBUTES, ITEM_COLD, ITEM_NAMES

log = logging.getLogger(__name__)

#: how a new item's collaborative part c is obtained by default (model/magnet/cold.py)
DEFAULT_COLLABORATIVE = "ridge"
#: largest tolerated difference between the rebuilt model's encoding and RUN/arrays (a different dataset)
_REBUILD_ATOL = 1e-3


class AddItemsError(ValueError):
    """Bad input to `magnet add-items`; the message is one line naming the problem."""


def read_new_items(path: Path, enc: ItemEncoders) -> pd.DataFrame:
    """The items file as strings, indexed by canonical external id, content checked."""
    try:
        table = read_table(Path(path), "items", [enc.item_col])
    except DatasetError as exc:
        raise AddItemsError(str(exc)) from None
    missing = [c for c in enc.content_columns if c not in table.columns]
    if missing:
        raise AddItemsError(
            f"{path}: missing content column(s) {', '.join(missing)} recorded at import; "
            f"the file has: {', '.join(table.columns)}"
        )
    ids = table[enc.item_col].str.strip()
    empty = (ids == "").to_numpy()
    if empty.any():
        raise AddItemsError(f"{path}: column {enc.item_col} is empty on {int(empty.sum())} rows "
                            f"(e.g. line {int(np.argmax(empty)) + 2})")
    if bool(ids.str.fullmatch(INT_RE).all()):
        ids = canonical_ints(ids)
    dup = ids.duplicated()
    if dup.any():
        raise AddItemsError(f"{path}: column {enc.item_col} has {int(dup.sum())} duplicate ids "
                            f"(e.g. {ids[dup].iloc[0]!r})")
    table = table.set_axis(ids.to_numpy(), axis=0)
    for modality, cols, has in (
        ("text", enc.text_cols, lambda v: bool(item_text(v))),
        ("meta", enc.meta_cols, lambda v: bool(item_meta_tokens(enc.meta_cols, v))),
    ):
        if not cols:
            continue
        ok = np.array([has(v) for v in table[cols].itertuples(index=False)], dtype=bool)
        if not ok.all():
            first = int(np.argmax(~ok))
            raise AddItemsError(
                f"{path}: {int((~ok).sum())} items have no {modality} content (columns {', '.join(cols)} are all "
                f"empty or NaN), e.g. item {table.index[first]!r} on line {first + 2}"
            )
    return table


def _run_info(run: Path) -> dict[str, Any]:
    info_file = run / "run.json"
    if not run.is_dir():
        raise AddItemsError(f"run directory {run} does not exist")
    if not info_file.is_file() or not (run / "metrics.json").is_file():
        raise AddItemsError(f"{run} is not a finished `magnet train` run (no run.json/metrics.json)")
    info = json.loads(info_file.read_text())
    if info.get("model") != "magnet":
        raise AddItemsError(
            f"{run} is a {info.get('model')} run: only MAGNET has a content path to embed new items from content"
        )
    return info


def rebuild_model(run: Path, data_dir: Path) -> Any:
    """The run's MAGNET with its best weights, on the CPU, in eval mode."""
    from model import build

    ds = load_dataset(data_dir)
    try:
        cfg = load_config(run / "config.yaml")
    except ConfigError as exc:
        raise AddItemsError(f"{run / 'config.yaml'}: {exc}") from None
    model = build("magnet", ds.n_users, ds.n_items, ds.train, ds.features, cfg.model_section())
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def extend_item_files(prior: dict[str, list], enc: ItemEncoders, table: pd.DataFrame, rows: np.ndarray,
                      n_items: int) -> dict[str, list]:
    """The run's per-item files (service.item_files) grown to `n_items`, the new items' entries
    at `rows` filled from their CSV rows: cold flags, display names from the title column and
    filter attributes from the meta columns, so names and `filter` keep working after add-items."""
    def grown(entries: list, fill: Any) -> list:
        return [*entries, *([fill] * (n_items - len(entries)))]

    cold = grown(prior.get(ITEM_COLD) or [], False)
    for r in rows:
        cold[r] = True
    out: dict[str, list] = {ITEM_COLD: cold}
    names = prior.get(ITEM_NAMES)
    if names is not None:
        names = grown(names, None)
        if enc.title_col and enc.title_col in table.columns:
            for r, t in zip(rows, table[enc.title_col].str.strip()):
                names[r] = t or None
        out[ITEM_NAMES] = names
    attributes = prior.get(ITEM_ATTRIBUTES)
    if attributes is not None:
        attributes = grown(attributes, None)
        if enc.meta_cols:
            for r, entry in zip(rows, item_attributes(enc.meta_cols, table[enc.meta_cols])):
                attributes[r] = entry
        out[ITEM_ATTRIBUTES] = attributes
    return out


def add_items(
    run: Path,
    items: Path,
    out: Path,
    *,
    replace: bool = False,
    collaborative: str = DEFAULT_COLLABORATIVE,
    text_encoder: TextEncoder | None = None,
    exact_max_items: int = EXACT_MAX_ITEMS,
) -> dict[str, Any]:
    """Writes the bundle (run items + items from `items`) at `out`; returns a summary."""
    started = time.perf_counter()
    run, items, out = Path(run), Path(items), Path(out)
    try:
        check_bundle_out(out)
    except ExportError as exc:
        raise AddItemsError(str(exc)) from None
    info = _run_info(run)
    data_dir = Path(info["data_dir"])
    if not data_dir.is_dir():
        raise AddItemsError(f"the run's dataset directory {data_dir} no longer exists (its encoders are needed)")
    enc = ItemEncoders.read(data_dir)
    table = read_new_items(items, enc)
    data = read_run_arrays(run)
    index = {item_id: i for i, item_id in enumerate(data["item_ids"])}
    known = [i for i in table.index if i in index]
    if known and not replace:
        raise AddItemsError(
            f"{items}: {len(known)} item ids are already in the run (e.g. {known[0]!r}); pass --replace to "
            "embed them again from content"
        )

    t_model = time.perf_counter()
    model = rebuild_model(run, data_dir)
    with torch.no_grad():
        rebuilt = model.encode().item_emb.numpy()
    if rebuilt.shape != data["item_emb"].shape or np.abs(rebuilt - data["item_emb"]).max() > _REBUILD_ATOL:
        raise AddItemsError(f"the model rebuilt from {run} and {data_dir} does not reproduce RUN/arrays/item_emb.npy "
                            "(was the dataset directory imported again since training?)")
    if collaborative == "learned" and getattr(model, "content_map", None) is None:
        raise AddItemsError(f"--collaborative learned needs a model trained with magnet.cold_dropout > 0; {run} was not")
    t_encode = time.perf_counter()
    features = enc.encode(table, text_encoder)
    t_path = time.perf_counter()
    try:
        new = model.content_path(features, collaborative=collaborative)
    except ValueError as exc:  # features that do not fit the model (e.g. a changed text encoder)
        raise AddItemsError(f"{items}: {exc}") from None
    t_write = time.perf_counter()

    rows = np.array([index.get(i, -1) for i in table.index])
    added = rows < 0
    n_old = len(data["item_ids"])
    rows[added] = n_old + np.arange(int(added.sum()))
    n_items = n_old + int(added.sum())
    merged = dict(data)
    for key, part in (("item_emb", new.item_emb), ("item_base", new.item_base), ("item_gates", new.item_gates),
                      ("item_experts", new.item_experts)):
        old = data[key]
        full = np.zeros((n_items, *old.shape[1:]), dtype=np.float32)
        full[:n_old] = old
        full[rows] = part.numpy().astype(np.float32)
        merged[key] = full
    merged["item_ids"] = [*data["item_ids"], *[str(i) for i in table.index[added]]]
    merged["item_files"] = extend_item_files(data["item_files"], enc, table, rows, n_items)
    cold_items = int(sum(merged["item_files"][ITEM_COLD]))
    try:
        fmt.check_gates(merged["item_gates"], "new items' gates")
        fmt.check_invariant(merged["item_emb"], merged["item_base"], merged["item_gates"], merged["item_experts"],
                            "new items' embeddings")
    except fmt.FormatError as exc:
        raise AddItemsError(str(exc)) from None
    write_bundle(merged, out, source_run=run, exact_max_items=exact_max_items,
                 manifest_extra={"cold_items": cold_items, "cold_start": {"collaborative": collaborative}})
    summary = {"bundle": str(out), "added": int(added.sum()), "replaced": int((~added).sum()),
               "n_items": n_items, "cold_items": cold_items, "seconds": time.perf_counter() - started,
               "parts_s": {"read": t_model - started, "model": t_encode - t_model, "encode": t_path - t_encode,
                           "content_path": t_write - t_path, "write": time.perf_counter() - t_write}}
    log.info("add-items: %s", summary)
    return summary
