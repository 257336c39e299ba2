"""Test helpers around a fabricated run (`offline.synthetic.make_run`): corrupting a
file, and the reference ranking the served one is checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from offline.synthetic import FakeRun


def flip_byte(path: Path, offset: int = -1) -> None:
    """Corrupts one byte of `path` in place (default: the last, i.e. array data)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def brute_force_topk(run: FakeRun, user: int, k: int) -> tuple[list[int], np.ndarray]:
    """Reference ranking: float64 e_u . e_i, training items removed, ties by index."""
    scores = run.item_emb.astype(np.float64) @ run.user_emb[user].astype(np.float64)
    scores[run.seen(user)] = -np.inf
    order = np.lexsort((np.arange(scores.size), -scores))
    order = [int(i) for i in order if np.isfinite(scores[i])][:k]
    return order, scores[order]
