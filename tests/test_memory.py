"""PeakMemory on the CPU: the kernel's resident-set high-water mark, reset per block, nested blocks kept apart.

Each measurement runs in a fresh interpreter: what earlier tests left in this process's heap (freed but still
resident pages that a new array can reuse without growing the resident set) made the figures depend on test order.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from transferlab.training import memory

PRELUDE = """
import json, time
import numpy as np
from transferlab.training import memory
from transferlab.training.memory import PeakMemory
MB = 2**20

def touch(mb):
    block = np.ones(mb * MB // 8)  # written, so resident
    del block
"""


def _measure(body: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PRELUDE + body], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(memory._high_water_mark() is None or not memory._reset_high_water_mark(), reason="needs Linux's VmHWM")
def test_nested_blocks_each_see_their_own_peak():
    peaks = _measure("""
with PeakMemory() as outer:
    touch(300)
    with PeakMemory() as inner:
        touch(100)
    touch(50)
print(json.dumps({"inner": inner.peak_mb, "outer": outer.peak_mb, "open": len(memory._OPEN)}))
""")
    assert 90 <= peaks["inner"] < 200, peaks  # its own 100 MB, not the outer block's 300
    assert 290 <= peaks["outer"] < 450, peaks  # the inner block's reset did not hide the 300 MB
    assert peaks["open"] == 0


def test_the_sampling_fallback_measures_too():
    peaks = _measure("""
memory._reset_high_water_mark = lambda: False
with PeakMemory(interval_s=0.001) as block:
    data = np.ones(200 * MB // 8)
    time.sleep(0.05)  # let the sampler see it
    del data
print(json.dumps({"peak": block.peak_mb}))
""")
    assert 150 <= peaks["peak"] < 350, peaks
