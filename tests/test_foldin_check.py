"""bench.foldin_check: its Recall@20 by hand, and its refusal of a directory that is not a bench.online run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.foldin_check import main, recall


def test_recall_masks_training_items_and_counts_hits_by_hand() -> None:
    item_emb = np.arange(25, dtype=np.float32)[:, None]  # score of item i = i for a vector [1]
    vectors = np.array([[1.0], [-1.0]])
    # user 0: item 24 masked, so its top 20 are items 4..23: 4 is a hit, 2 is not -> 1/2
    # user 1: reversed order, items 0 and 1 masked, top 20 = 2..21: both 2 and 21 hit -> 1
    got = recall(item_emb, vectors, [[24], [0, 1]], [{4, 2}, {2, 21}])
    assert got == pytest.approx((0.5 + 1.0) / 2)


def test_a_directory_without_a_finished_run_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--work", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"not a finished bench.online work directory: {tmp_path}" in capsys.readouterr().err
