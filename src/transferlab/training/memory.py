"""Peak memory of one strategy's run: GPU allocator peak on CUDA, sampled process RSS growth on the CPU."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import torch


def _reset_linux_high_water_mark() -> bool:
    """Linux keeps the resident set's peak (VmHWM) and resets it on request: exact, and free."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _linux_high_water_mark() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


class PeakMemory:
    """Context manager; `peak_mb` is the most memory the block added over what the process held at its start.

    On the CPU, PyTorch's allocator keeps no peak statistic: Linux's own high-water mark is used,
    reset at the start; elsewhere a thread samples the resident set every few milliseconds (short
    spikes can be missed, and on 2 cores the sampling itself took a sixth of a core at 5 ms).
    """

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._cuda = torch.cuda.is_available()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self._cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._process = psutil.Process()
        self._start = self._process.memory_info().rss
        self._peak = self._start
        if not _reset_linux_high_water_mark():
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
        elif self._thread is None:
            peak = _linux_high_water_mark()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._process.memory_info().rss)
        self.peak_mb = max(0.0, (peak - self._start) / 2**20)
