"""Task A (bbc-news) then task B (rt-polarity) on one minilm-l6 body: how much of A each mitigation keeps.

Every arm starts task B from the same model trained on A (trained once per seed), so the arms differ
only in the mitigation. Topic classification is task A because minilm-l6 learns it from 160 examples in
two epochs; rt-polarity at that size stays near chance, and forgetting a task never learned says nothing. Prints mean ± std over the seeds and writes the readings to --out (JSON).

    python bench/forgetting_sequence.py --seeds 3 --out runs/forgetting-sequence.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from transferlab.config import load_run_config
from transferlab.recipes.experiment import prepare
from transferlab.recipes.forgetting import run_sequential
from transferlab.runio import atomic_write_json

ARMS = {"none": {}, "replay": {"mitigations": ["replay"]}, "ewc": {"mitigations": ["ewc"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--task-a", default="bbc-news")
    parser.add_argument("--task-b", default="rt-polarity")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=1e-4, help="task A's learning rate")
    parser.add_argument("--lr-b", type=float, default=5e-4, help="task B's: high enough that plain fine-tuning forgets A")
    parser.add_argument("--ewc-lambda", type=float, default=1e5)
    parser.add_argument("--replay-fraction", type=float, default=0.25)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/forgetting-sequence.json"))
    args = parser.parse_args()

    config = load_run_config(
        None,
        backbone=args.backbone,
        dataset=args.task_a,
        strategies=[args.strategy],
        n_train=args.n_train,
        n_test=args.n_test,
        max_length=args.max_length,
        cv=1,
        training={"epochs": args.epochs, "lr": args.lr},
        forgetting={"meter": "sequential", "task_b": args.task_b, "ewc_lambda": args.ewc_lambda, "replay_fraction": args.replay_fraction},
    )
    a = prepare(config)
    b_config = dataclasses.replace(config, dataset=args.task_b, training=dataclasses.replace(config.training, metric=None, lr=args.lr_b))
    # (as `transferlab forgetting --meter sequential --task-b-lr` does for one mitigation at a time)
    b = prepare(b_config)
    readings: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        for arm, settings in ARMS.items():
            a.config.forgetting = b.config.forgetting = dataclasses.replace(config.forgetting, **settings)
            started = time.perf_counter()
            reading = run_sequential(a, b, args.strategy, seed)["forgetting"]
            reading["seconds"] = time.perf_counter() - started
            readings[arm].append(reading)
            print(
                f"seed {seed} {arm}: task A {reading['before']:.4f} -> {reading['after']:.4f}; task B {reading['b_score']:.4f}", flush=True
            )
            atomic_write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "readings": readings})
    print("| mitigation | task A after A | task A after B | task B |")
    print("|---|---|---|---|")
    for arm, rows in readings.items():
        cells = [np.array([r[k] for r in rows]) for k in ("before", "after", "b_score")]
        print(f"| {arm} | " + " | ".join(f"{c.mean():.4f} ± {c.std(ddof=1) if len(c) > 1 else 0:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
