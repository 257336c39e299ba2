"""Optional per-item files that travel from the dataset directory into the bundle.

A dataset directory may hold extra per-item JSON files (e.g. ``item_names.json``
written by ``magnet import`` from a title column). Each is a JSON list with one
entry per internal item index. They travel the same way:

    dataset dir --(magnet train copies)--> RUN/arrays/ --(magnet export)--> bundle

where the bundle lists each one in ``manifest.json["files"]`` with its sha256 like
any other file, and the loader parses the ones it knows. A file that is absent is
simply not there; a file that is present must be valid (right length, right entry
type), or the step that meets it fails naming the file.

To add a kind of per-item file, add an entry to `ITEM_FILES`; import, training,
export and loading pick it up from there. Torch-free on purpose: the loader and the
offline jobs share it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ITEM_NAMES = "item_names.json"
ITEM_ATTRIBUTES = "item_attributes.json"
#: true for items embedded from content alone (`magnet add-items`), false for trained ones
ITEM_COLD = "item_cold.json"


@dataclass(frozen=True)
class ItemFile:
    """One kind of optional per-item file: what an entry means and how to check one."""

    description: str
    entry_ok: Callable[[Any], bool]
    entry_rule: str  # said in the error when an entry fails `entry_ok`


def _str_or_null(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _attributes_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v) for k, v in value.items()))


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


#: every optional per-item file the pipeline carries, by file name
ITEM_FILES: dict[str, ItemFile] = {
    ITEM_NAMES: ItemFile("display name (title) per item, for people", _str_or_null, "a string or null"),
    ITEM_ATTRIBUTES: ItemFile("attribute values per item ({column: [values]}, from --meta-cols), for filters",
                              _attributes_or_null, "an object of string lists or null"),
    ITEM_COLD: ItemFile("whether the item was embedded from its content alone (add-items)", _bool, "true or false"),
}


class ItemFileError(ValueError):
    """An optional per-item file that is present but malformed; the message names it."""


def check_item_file(name: str, value: Any, n_items: int, where: Path | str | None = None) -> list[Any]:
    """`value` as the list it must be (one valid entry per item), else ItemFileError."""
    label = str(where or name)
    spec = ITEM_FILES.get(name)
    if spec is None:
        raise ItemFileError(f"{label}: not a known per-item file (known: {sorted(ITEM_FILES)})")
    if not isinstance(value, list):
        raise ItemFileError(f"{label}: expected a JSON list with one entry per item ({spec.description})")
    if len(value) != n_items:
        raise ItemFileError(f"{label}: {len(value)} entries, expected {n_items} (one per item)")
    for n, entry in enumerate(value):
        if not spec.entry_ok(entry):
            raise ItemFileError(f"{label}: entry {n} is {entry!r}; each entry must be {spec.entry_rule}")
    return value


def parse_item_file(name: str, data: bytes, n_items: int, where: Path | str | None = None) -> list[Any]:
    """Decodes and checks one file's bytes."""
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ItemFileError(f"{where or name}: not valid JSON ({exc})") from exc
    return check_item_file(name, value, n_items, where)


def read_item_files(directory: Path, n_items: int) -> dict[str, list[Any]]:
    """Every known per-item file present in `directory`, checked, by file name."""
    directory = Path(directory)
    out: dict[str, list[Any]] = {}
    for name in ITEM_FILES:
        path = directory / name
        if path.is_file():
            out[name] = parse_item_file(name, path.read_bytes(), n_items, path)
    return out


def encode_item_file(value: list[Any]) -> bytes:
    """The bytes written for a per-item file (UTF-8 JSON, no NaN)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


def write_item_files(directory: Path, files: Mapping[str, list[Any]]) -> list[str]:
    """Writes each (already checked) file into `directory`, which the caller publishes atomically."""
    for name, value in files.items():
        (Path(directory) / name).write_bytes(encode_item_file(value))
    return list(files)
