"""PeakMemory on the CPU: the kernel's resident-set high-water mark, reset per block, nested blocks kept apart."""

from __future__ import annotations

import time

import numpy as np
import pytest

from transferlab.training import memory
from transferlab.training.memory import PeakMemory

MB = 2**20


def _touch(mb: int) -> None:
    block = np.ones(mb * MB // 8)  # written, so resident
    del block


@pytest.mark.skipif(memory._high_water_mark() is None or not memory._reset_high_water_mark(), reason="needs Linux's VmHWM")
def test_nested_blocks_each_see_their_own_peak():
    with PeakMemory() as outer:
        _touch(300)
        with PeakMemory() as inner:
            _touch(100)
        _touch(50)
    assert 90 <= inner.peak_mb < 200, inner.peak_mb  # its own 100 MB, not the outer block's 300
    assert 290 <= outer.peak_mb < 450, outer.peak_mb  # the inner block's reset did not hide the 300 MB
    assert memory._OPEN == []


def test_the_sampling_fallback_measures_too(monkeypatch):
    monkeypatch.setattr(memory, "_reset_high_water_mark", lambda: False)
    with PeakMemory(interval_s=0.001) as block:
        block_data = np.ones(200 * MB // 8)
        time.sleep(0.05)  # let the sampler see it
        del block_data
    assert 150 <= block.peak_mb < 350, block.peak_mb
