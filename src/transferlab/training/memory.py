"""Peak memory of one strategy's run: GPU allocator peak on CUDA, sampled process RSS growth on the CPU."""

from __future__ import annotations

import threading
import time

import psutil
import torch


class PeakMemory:
    """Context manager; `peak_mb` is the most memory the block added over what the process held at its start.

    On the CPU the resident set is sampled every few milliseconds by a thread (PyTorch's CPU
    allocator keeps no peak statistic), so very short spikes can be missed.
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._cuda = torch.cuda.is_available()

    def __enter__(self) -> PeakMemory:
        if self._cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._process = psutil.Process()
            self._start = self._process.memory_info().rss
            self._peak = self._start
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
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._process.memory_info().rss)
        self.peak_mb = max(0.0, (peak - self._start) / 2**20)
