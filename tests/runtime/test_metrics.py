"""Latency samples stay bounded in a long run: each name keeps its most recent samples, and a
STATS message carries them in order."""

from __future__ import annotations

import numpy as np

from rmio.runtime.metrics import Samples, summary
from rmio.runtime.wire import STATS_SAMPLES


def test_samples_keep_only_the_most_recent_ones() -> None:
    s = Samples(cap=4)
    for k in range(10):
        s.add("round", k)
        s.add("gather", 100 + k)
    assert list(s.data["round"]) == [6.0, 7.0, 8.0, 9.0]
    names, arrays = s.arrays()
    assert names == ["gather", "round"]
    np.testing.assert_array_equal(arrays[STATS_SAMPLES[1]], np.float32([6, 7, 8, 9]))
    np.testing.assert_array_equal(s.arrays(limit=2)[1][STATS_SAMPLES[0]], np.float32([108, 109]))
    assert summary(s.data["round"])["n"] == 4  # what a report summarises is the kept samples


def test_many_samples_take_no_more_room_than_the_cap() -> None:
    s = Samples()
    for k in range(300_000):
        s.add("round", k)
    kept = s.data["round"]
    assert len(kept) == 100_000 and kept[0] == 200_000.0 and kept[-1] == 299_999.0
