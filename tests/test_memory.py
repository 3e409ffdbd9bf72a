"""Peak memory is measured per block: a freed allocation still counts, and an earlier block's peak does not."""

from __future__ import annotations

import time

import numpy as np

from transferlab.training.memory import PeakMemory


def test_peak_memory_sees_a_freed_allocation_and_resets_between_blocks():
    with PeakMemory() as big:
        block = np.ones(25_000_000)  # 190.7 MiB, touched, held for a few samples, then freed before the block ends
        time.sleep(0.1)
        del block
    with PeakMemory() as small:
        np.ones(5_000_000).sum()  # 38.1 MiB, alive during the call
    assert 170 < big.peak_mb < 260, big.peak_mb
    assert small.peak_mb < 80, small.peak_mb  # not the first block's spike (the allocator may even reuse freed pages)
