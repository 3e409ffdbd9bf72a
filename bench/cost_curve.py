"""The cost curve: time and peak memory of a comparison's head, LoRA and full fine-tuning against the number of
training examples, up to all of imdb (23,900 reviews beside a 1,000-review test set, at 256 tokens: its 25,000 less
the test set and 96 reviews that repeat others).

Each (size, strategy) runs in a fresh process, so that one run's peak does not hide the next one's, through the
recipe `compare` uses (`prepare`, then `run_strategy`, default settings). Preparation (reading, tokenising, the
data checks and their frozen features) and the strategy's run are timed apart. Peak memory is the process's peak
resident set (VmHWM) over both; beside it, what the prepared run holds per example: the tokenised inputs (Python
lists, as the tokenizer returns them) and the frozen features the checks computed and the head reuses. What is
left of the peak after those is the model, its optimizer and one batch's activations, and should not grow with n.

Rows are appended to --out and rows already there are skipped, so the curve can be built over several sittings
(on 2 CPU cores, full fine-tuning on 23,900 reviews is hours). The summary fits, per strategy, seconds and
peak MB against n on a log-log scale (exponent 1 = linear).

    .venv/bin/python bench/cost_curve.py [--dataset imdb] [--sizes 2000,8000,23900] [--strategies head,lora,full]
        [--max-length 256] [--n-test 1000] [--out runs/bench/cost_curve.jsonl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _python_size(value: Any) -> int:
    """Bytes a tokenised example holds: the list objects and the integers in them (small ones are shared)."""
    if isinstance(value, dict):
        return sys.getsizeof(value) + sum(_python_size(v) for v in value.values())
    if isinstance(value, list):
        return sys.getsizeof(value) + sum(0 if isinstance(v, int) and -5 <= v <= 256 else _python_size(v) for v in value)
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    return sys.getsizeof(value)


def _peak_mb() -> float:
    from transferlab.training.memory import _high_water_mark

    return (_high_water_mark() or 0) / 2**20


def one_run(dataset: str, n_train: int, n_test: int, strategy: str, max_length: int) -> dict[str, Any]:
    """Prepare and run one strategy in this process; what it cost."""
    from transferlab.config import load_run_config
    from transferlab.recipes.experiment import forgo_onednn_cache_unless_training, prepare, run_strategy

    forgo_onednn_cache_unless_training([strategy])  # as the command line does
    config = load_run_config(None, dataset=dataset, n_train=n_train, n_test=n_test, strategies=[strategy], max_length=max_length)
    started = time.perf_counter()
    experiment = prepare(config, log=lambda _: None)
    prepared = time.perf_counter()
    run = run_strategy(experiment, strategy)
    finished = time.perf_counter()
    examples = len(experiment.encoded)
    frozen = experiment.findings.layer_features or {}
    return {
        "dataset": dataset,
        "n_train": n_train,
        "strategy": strategy,
        "max_length": max_length,
        "status": run.result["status"],
        "accuracy": run.result.get("metrics", {}).get("accuracy"),
        "prepare_seconds": prepared - started,
        "run_seconds": finished - prepared,
        "peak_mb": _peak_mb(),
        "examples": examples,
        "encoded_mb": sum(_python_size(f) for f in experiment.encoded.values()) / 2**20,
        "frozen_features_mb": sum(np.asarray(v).nbytes for v in frozen.values()) / 2**20,
    }


def _fit(xs: list[float], ys: list[float]) -> float | None:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0]) if len(xs) > 1 else None


def summarize(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| strategy | n | prepare s | run s | peak MB | inputs MB (per example) | frozen features MB | peak - both MB | accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        runs = sorted((r for r in rows if r["strategy"] == strategy), key=lambda r: r["n_train"])
        for r in runs:
            per_example = 1024 * r["encoded_mb"] / r["examples"]
            rest = r["peak_mb"] - r["encoded_mb"] - r["frozen_features_mb"]
            lines.append(
                f"| {strategy} | {r['n_train']:,} | {r['prepare_seconds']:.0f} | {r['run_seconds']:.0f} | {r['peak_mb']:.0f} | "
                f"{r['encoded_mb']:.0f} ({per_example:.1f} kB) | {r['frozen_features_mb']:.0f} | {rest:.0f} | {r['accuracy']:.3f} |"
            )
        sizes = [r["n_train"] for r in runs]
        seconds = _fit(sizes, [r["prepare_seconds"] + r["run_seconds"] for r in runs])
        peak = _fit(sizes, [r["peak_mb"] for r in runs])
        if seconds is not None:
            lines.append(f"| {strategy}: time ~ n^{seconds:.2f}, peak memory ~ n^{peak:.2f} | | | | | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="imdb")
    parser.add_argument("--sizes", default="2000,8000,23900")
    parser.add_argument("--strategies", default="head,lora,full")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "cost_curve.jsonl")
    parser.add_argument("--one", nargs=2, metavar=("N", "STRATEGY"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.dataset, int(args.one[0]), args.n_test, args.one[1], args.max_length)))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    done = {(r["dataset"], r["n_train"], r["strategy"], r["max_length"]) for r in rows}
    for n in (int(v) for v in args.sizes.split(",")):
        for strategy in args.strategies.split(","):
            if (args.dataset, n, strategy, args.max_length) in done:
                continue
            child = [
                sys.executable,
                __file__,
                "--dataset",
                args.dataset,
                "--max-length",
                str(args.max_length),
                "--n-test",
                str(args.n_test),
            ]
            result = subprocess.run([*child, "--one", str(n), strategy], capture_output=True, text=True, check=True)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append(row)
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(f"{strategy} on {n:,}: {row['prepare_seconds'] + row['run_seconds']:.0f}s, peak {row['peak_mb']:.0f} MB", flush=True)
    print(summarize([r for r in rows if r["dataset"] == args.dataset and r["max_length"] == args.max_length]))


if __name__ == "__main__":
    main()
