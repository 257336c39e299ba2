"""service/search.py's fast helpers equal the plain numpy forms they replace."""

import numpy as np

from service.search import drop_excluded


def test_drop_excluded_is_isin_filtering_in_order():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        cand = rng.integers(0, 50, rng.integers(0, 40))
        exclude = rng.integers(0, 60, rng.integers(0, 30))
        expected = cand[~np.isin(cand, exclude)]
        assert np.array_equal(drop_excluded(cand, exclude), expected)
    cand = np.array([7, 3, 3, 9])
    assert drop_excluded(cand, np.array([], dtype=np.int64)) is cand
    assert drop_excluded(cand, np.array([3])).tolist() == [7, 9]
