"""What the data checks' forward pass leaves in memory as n grows: its peak and heap growth beside the allocator's knobs.

The pass that computes the frozen features (`recipes.dataset._frozen_features`: batches of 64 grouped by length, every
hidden state kept) runs alone on the first n reviews of a data set, each (n, variant) in a fresh process. Reported:
the growth of the peak resident set (VmHWM) over the pass, glibc's heap (`mallinfo2`: bytes in use, and the arena,
in use and free) and the resident set left after `malloc_trim`, and the pass's seconds. A variant is a set of
environment variables the child starts with, read by glibc or oneDNN at their first use:

- `default`: nothing set;
- `onednn-cache-0`: `ONEDNN_PRIMITIVE_CACHE_CAPACITY=0`, oneDNN keeps no primitive between calls;
- `mmap-1mb`: `MALLOC_MMAP_THRESHOLD_=1048576`, glibc maps every block of 1 MB or more apart and unmaps it when freed.

Linux and glibc only (`/proc/self/status`, `mallinfo2`).

    .venv/bin/python bench/forward_memory.py [--dataset imdb] [--sizes 400,1200] [--max-length 256]
        [--variants default,onednn-cache-0,mmap-1mb]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    "default": {},
    "onednn-cache-0": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"},
    "mmap-1mb": {"MALLOC_MMAP_THRESHOLD_": "1048576"},
}


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def _memory(libc: ctypes.CDLL) -> dict[str, float]:
    """MB: the peak and current resident set, glibc's main heap and thread arenas (`arena`) and what of it is in use."""
    import psutil

    from transferlab.training.memory import _high_water_mark

    info = libc.mallinfo2()
    return {
        "peak": _high_water_mark() / 2**20,
        "resident": psutil.Process().memory_info().rss / 2**20,
        "arena": info.arena / 2**20,
        "in_use": info.uordblks / 2**20,
    }


def one_pass(dataset: str, n: int, max_length: int) -> dict[str, float]:
    """The frozen-feature pass over the first n examples, in this process: growth of each figure over it."""
    from transferlab.backbones import load_preprocessor, resolve_backbone
    from transferlab.config import load_run_config
    from transferlab.recipes.dataset import _frozen_features, load_run_data

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    config = load_run_config(None, dataset=dataset, n_train=n, n_test=10, strategies=["head"], max_length=max_length)
    data = load_run_data(config).data
    backbone = resolve_backbone(config.backbone)
    preprocessor = load_preprocessor(backbone, max_length)
    encoded = preprocessor.encode(data.inputs[:n], data.labels[:n])
    before = _memory(libc)
    started = time.perf_counter()
    _frozen_features(backbone, data.label_names, config, encoded, preprocessor)
    seconds = time.perf_counter() - started
    after = _memory(libc)
    libc.malloc_trim(0)
    trimmed = _memory(libc)
    return {
        "seconds": seconds,
        "peak_growth_mb": after["peak"] - before["peak"],
        "in_use_growth_mb": after["in_use"] - before["in_use"],
        "arena_growth_mb": after["arena"] - before["arena"],
        "resident_growth_after_trim_mb": trimmed["resident"] - before["resident"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="imdb")
    parser.add_argument("--sizes", default="400,1200")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process's single pass
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_pass(args.dataset, args.one, args.max_length)))
        return
    print("| variant | n | peak growth MB | heap in use MB | heap (arena) MB | resident after trim MB | seconds |")
    print("|---|---|---|---|---|---|---|")
    for variant in args.variants.split(","):
        for n in (int(v) for v in args.sizes.split(",")):
            child = [sys.executable, __file__, "--dataset", args.dataset, "--max-length", str(args.max_length), "--one", str(n)]
            env = {**os.environ, **VARIANTS[variant]}
            result = subprocess.run(child, capture_output=True, text=True, check=True, env=env)
            r = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"| {variant} | {n:,} | {r['peak_growth_mb']:+.0f} | {r['in_use_growth_mb']:+.0f} | {r['arena_growth_mb']:+.0f} | "
                f"{r['resident_growth_after_trim_mb']:+.0f} | {r['seconds']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
