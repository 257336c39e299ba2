"""Filters on item attributes (``filter`` of POST /recommend/{user_id}).

The attributes are the bundle's optional ``item_attributes.json`` (from
``magnet import --meta-cols``): per item, {column: [values]} (a multi-valued column
has several). A filter {attribute: value | [values]} keeps the items whose attribute
has any of the values; several attributes must all match. Values compare as strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class UnknownAttribute(ValueError):
    """A filter names an attribute the bundle lacks; the message names the known ones."""


AttributeIndex = dict[str, dict[str, np.ndarray]]


def build_attribute_index(attributes: Sequence[Mapping[str, Sequence[str]] | None] | None) -> AttributeIndex:
    """attribute -> value -> sorted internal item indices that have it."""
    lists: dict[str, dict[str, list[int]]] = {}
    for item, entry in enumerate(attributes or ()):
        for attr, values in (entry or {}).items():
            by_value = lists.setdefault(attr, {})
            for value in values:
                by_value.setdefault(str(value), []).append(item)
    return {attr: {v: np.unique(np.array(ids, dtype=np.int64)) for v, ids in by_value.items()}
            for attr, by_value in lists.items()}


def allowed_items(index: AttributeIndex, filt: Mapping[str, Any]) -> np.ndarray:
    """Sorted internal indices of the items that match `filt` (see module docstring)."""
    unknown = [a for a in filt if a not in index]
    if unknown:
        known = ", ".join(sorted(index)) or "none: the bundle has no item attributes (magnet import --meta-cols)"
        raise UnknownAttribute(f"unknown filter attribute(s) {', '.join(map(repr, unknown))}; known: {known}")
    result: np.ndarray | None = None
    for attr, wanted in filt.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        postings = [index[attr].get(str(v)) for v in values]
        hit = np.unique(np.concatenate([p for p in postings if p is not None] or [np.zeros(0, dtype=np.int64)]))
        result = hit if result is None else np.intersect1d(result, hit, assume_unique=True)
    return result if result is not None else np.zeros(0, dtype=np.int64)
