"""Where a strategy's run spends its time: py-spy samples one run (the bench's split and budget) and each
sample is put in the first phase whose function appears in its stack, innermost first.

    python bench/phases.py [--strategy full] [--n-train 2000] [--epochs 2] [--precision auto] [--no-run-folder]

Prints the share of samples per phase; the collapsed stacks stay in runs/bench/profile-STRATEGY.txt.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

# (phase, function, a fragment of its file's path), checked innermost frame first: a checkpoint save inside
# an evaluation counts as a save, a forward pass inside an evaluation as evaluation.
PHASES = [
    ("imports", "_find_and_load", "importlib"),
    ("checkpoint save", "_save_checkpoint", "transformers"),
    ("best checkpoint restore", "_load_best_model", "transformers"),
    ("evaluation", "evaluate", "transformers"),
    ("optimizer step", "step", "torch/optim"),
    ("gradient clipping", "clip_grad_norm_", "torch"),
    ("backward", "backward", "torch"),
    ("forward", "compute_loss", ""),
    ("feature extraction", "pooled_features", "training/loop"),
    ("head: cross-validated regression", "fit_probe", "evaluation/probe"),
    ("test predictions", "predict_proba", "training/loop"),
    ("model build", "build_classifier", "backbones"),
    ("preparation (data, tokenisation)", "prepare", "recipes/experiment"),
    ("peak-memory sampler thread", "_sample", "training/memory"),
]


def run_once(strategy: str, n_train: int, n_test: int, epochs: int, max_length: int, precision: str, run_folder: bool) -> None:
    from transferlab.config import load_run_config
    from transferlab.recipes.experiment import prepare, run_strategy

    config = load_run_config(
        None,
        strategies=[strategy],
        cv=1,
        n_train=n_train,
        n_test=n_test,
        max_length=max_length,
        training={"epochs": epochs, "batch_size": 16, "precision": precision},
    )
    with tempfile.TemporaryDirectory() as folder:  # a job folder, as compare gives: resumable checkpoints
        run_strategy(prepare(config, log=lambda _: None), strategy, workdir=Path(folder) if run_folder else None)


def phase_of(stack: str) -> str:
    """py-spy's raw frames read `Class.function (path:line)`."""
    for frame in stack.split(";")[::-1]:  # innermost first
        name, _, where = frame.partition(" (")
        for phase, function, path in PHASES:
            if (name == function or name.endswith("." + function)) and path in where:
                return phase
    return "other (Trainer bookkeeping, data loading, logging)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--no-run-folder", action="store_true", help="no job folder: checkpoints hold the model only, as outside compare")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_once(args.strategy, args.n_train, args.n_test, args.epochs, args.max_length, args.precision, not args.no_run_folder)
        return
    out = Path("runs/bench") / f"profile-{args.strategy}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    child = [sys.executable, __file__, "--child", *sys.argv[1:]]
    py_spy = str(Path(sys.executable).parent / "py-spy")
    subprocess.run([py_spy, "record", "--format", "raw", "--rate", "50", "--nonblocking", "-o", str(out), "--", *child], check=True)
    samples: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack.strip():
            samples[phase_of(stack)] += int(count)
    total = sum(samples.values())
    print(f"{args.strategy} on {args.n_train} sentences, {args.epochs} epochs ({total} samples at 50 Hz):")
    for phase, count in samples.most_common():
        print(f"  {phase:<45} {count / total:6.1%}")


if __name__ == "__main__":
    main()
