"""PeakMemory on the CPU: the kernel's resident-set high-water mark, reset per block, nested blocks kept apart; and
the commands that only run models forward doing so without oneDNN's primitive cache, which fragments the heap.

Each measurement runs in a fresh interpreter: what earlier tests left in this process's heap (freed but still
resident pages that a new array can reuse without growing the resident set) made the figures depend on test order.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from transferlab.training import memory
from transferlab.training.inference import ONEDNN_CACHE_VARIABLE

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


ONEDNN_RUN = """
import os, sys, torch
from transferlab.training.inference import forgo_onednn_primitive_cache
if sys.argv[1] == "forgo":
    forgo_onednn_primitive_cache()
x, w = torch.randn(64, 384), torch.randn(384, 384)
with torch.autocast("cpu", dtype=torch.bfloat16):
    for _ in range(2):  # the same shape twice: a cache serves the second from the first
        torch.nn.functional.linear(x, w)
"""


def _onednn_creations(*args: str) -> list[str]:
    """How oneDNN created each primitive in a fresh interpreter (its verbose log): from its cache or anew."""
    env = {**os.environ, "ONEDNN_VERBOSE": "all"}
    env.pop(ONEDNN_CACHE_VARIABLE, None)
    done = subprocess.run([sys.executable, "-c", ONEDNN_RUN, *args], capture_output=True, text=True, check=True, env=env)
    return re.findall(r"primitive,create:(cache_\w+)", done.stdout)


def test_forgoing_onednns_cache_creates_every_primitive_anew():
    """Set before the first matmul, the setting reaches oneDNN: the second matmul of a shape is created again."""
    kept = _onednn_creations("keep")
    if not kept:
        pytest.skip("this CPU's bf16 matmuls do not go through oneDNN")
    assert kept == ["cache_miss", "cache_hit"]
    assert _onednn_creations("forgo") == ["cache_miss", "cache_miss"]


def test_only_commands_that_train_no_backbone_forgo_onednns_cache(monkeypatch):
    from transferlab.recipes.experiment import forgo_onednn_cache_unless_training

    for strategies, expected in ((["head"], "0"), ([], "0"), (["head", "lora"], None), (["full"], None)):
        monkeypatch.delenv(ONEDNN_CACHE_VARIABLE, raising=False)
        forgo_onednn_cache_unless_training(strategies)
        assert os.environ.get(ONEDNN_CACHE_VARIABLE) == expected, strategies
    monkeypatch.setenv(ONEDNN_CACHE_VARIABLE, "64")  # the user's own choice stands
    forgo_onednn_cache_unless_training(["head"])
    assert os.environ[ONEDNN_CACHE_VARIABLE] == "64"
