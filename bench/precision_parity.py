"""bf16 against fp32: does training under bf16 autocast cost accuracy? The evidence `precision: auto` stands on.

For each data set and seed, one real `compare --strategies head,lora,full` run per precision, same split and same
seed, nothing else changed (evaluation and export are fp32 in both). Each (data set, strategy) pair of runs is
paired by seed; the summary gives the mean of fp32 and bf16, the mean paired difference with its paired t-test,
and the training seconds of each. Text reads minilm-l6, images mobilenet-v2; the other settings are compare's
defaults (3 epochs, batch 16, 128 tokens, 224 px) at --n-train examples (--cv 1 keeps one hold-out split below
1,000 of them).

    .venv/bin/python bench/precision_parity.py [--datasets rt-polarity,fashion-mnist,bbc-news] [--seeds 3]
        [--n-train 1000] [--n-test 1000] [--cv K] [--strategies head,lora,full] [--out runs/bench/precision_parity.jsonl]

On a CPU without native bf16 the bf16 run would silently be fp32, so the script refuses to run there. Rows are
appended to --out and runs already there are skipped, so an interrupted bench resumes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from transferlab.config import load_run_config
from transferlab.evaluation.stats import paired_p_value
from transferlab.recipes.compare import compare
from transferlab.training.inference import cpu_has_bf16

BACKBONES = {"fashion-mnist": "mobilenet-v2", "mnist-5k": "mobilenet-v2"}
TEXT_BACKBONE = "minilm-l6"
METRICS = ("accuracy", "macro_f1")
PRECISIONS = ("fp32", "bf16")


def run(dataset: str, seed: int, precision: str, strategies: list[str], n_train: int, n_test: int, cv: int | None) -> list[dict]:
    """One compare run; a row per strategy with its test metrics and training seconds."""
    config = load_run_config(
        None,
        dataset=dataset,
        backbone=BACKBONES.get(dataset, TEXT_BACKBONE),
        strategies=strategies,
        n_train=n_train,
        n_test=n_test,
        cv=cv,
        training={"precision": precision, "seed": seed},
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        results = compare(config, Path(out_dir), log=lambda _: None, resume=False)
    seconds = time.perf_counter() - started
    rows = []
    for name, summary in results["strategies"].items():
        row = {"dataset": dataset, "seed": seed, "precision": precision, "strategy": name, "n_train": n_train, "status": summary["status"]}
        if summary["status"] == "ok":
            row.update({m: summary["metrics"][m]["mean"] for m in METRICS}, train_seconds=summary["train_seconds"])
        rows.append(row | {"compare_seconds": seconds})
    return rows


def summarize(rows: list[dict]) -> str:
    """Per (data set, strategy): fp32 and bf16 means, the paired difference (bf16 - fp32, points) with its p-value,
    and the seed where bf16 fell furthest behind (a collapse on one seed is what a 3-seed t-test cannot see)."""
    table = {}
    for row in rows:
        if row["status"] == "ok":
            table.setdefault((row["dataset"], row["strategy"]), {}).setdefault(row["precision"], {})[row["seed"]] = row
    lines = [
        "| data | strategy | seeds | fp32 accuracy | bf16 accuracy | bf16 - fp32, points (paired p) | worst seed | macro-F1 bf16 - fp32 (p) "
        "| train s fp32 / bf16 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    pooled: dict[str, list[float]] = {}
    for (dataset, strategy), by_precision in table.items():
        seeds = sorted(set(by_precision.get("fp32", {})) & set(by_precision.get("bf16", {})))
        if not seeds:
            continue
        cells = []
        for metric in METRICS:
            fp32 = np.array([by_precision["fp32"][s][metric] for s in seeds])
            bf16 = np.array([by_precision["bf16"][s][metric] for s in seeds])
            p = paired_p_value(bf16, fp32) if len(seeds) > 1 else float("nan")
            cells.append((fp32, bf16, p))
            pooled.setdefault(f"{strategy} {metric}", []).extend((bf16 - fp32).tolist())
        (fp32, bf16, p), (f_fp32, f_bf16, f_p) = cells
        seconds = [np.mean([by_precision[prec][s]["train_seconds"] for s in seeds]) for prec in PRECISIONS]
        lines.append(
            f"| {dataset} | {strategy} | {len(seeds)} | {_mean_std(fp32)} | {_mean_std(bf16)} | "
            f"{100 * (bf16 - fp32).mean():+.2f} (p {p:.2f}) | {100 * (bf16 - fp32).min():+.1f} | "
            f"{100 * (f_bf16 - f_fp32).mean():+.2f} (p {f_p:.2f}) | "
            f"{seconds[0]:.1f} / {seconds[1]:.1f} |"
        )
    lines.append("")
    for name, differences in sorted(pooled.items()):
        d = np.array(differences)
        p = paired_p_value(d, np.zeros_like(d)) if len(d) > 1 else float("nan")
        lines.append(f"pooled over data sets, {name}: bf16 - fp32 = {100 * d.mean():+.2f} points over {len(d)} pairs (p {p:.2f})")
    return "\n".join(lines)


def _mean_std(values: np.ndarray) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="rt-polarity,fashion-mnist,bbc-news")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--cv", type=int, default=None, help="folds [default: compare's, 5 below 1,000 training examples]")
    parser.add_argument("--strategies", default="head,lora,full")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/precision_parity.jsonl"))
    parser.add_argument("--summary-only", action="store_true", help="print the table of what --out holds")
    args = parser.parse_args()
    if not args.summary_only and not cpu_has_bf16() and not torch.cuda.is_available():
        raise SystemExit("this machine does not compute bf16 natively: bf16 would be emulated or skipped, nothing to compare")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    done = {(r["dataset"], r["seed"], r["precision"], r["n_train"]) for r in rows}
    strategies = args.strategies.split(",")
    for dataset in [] if args.summary_only else args.datasets.split(","):
        for seed in range(args.seeds):
            for precision in PRECISIONS:
                if (dataset, seed, precision, args.n_train) in done:
                    continue
                new = run(dataset, seed, precision, strategies, args.n_train, args.n_test, args.cv)
                with args.out.open("a") as out:
                    out.writelines(json.dumps(row) + "\n" for row in new)
                rows += new
                print(
                    ", ".join(f"{r['dataset']} seed {seed} {precision} {r['strategy']}: {r.get('accuracy', r['status'])}" for r in new),
                    flush=True,
                )
    print(summarize(rows))


if __name__ == "__main__":
    main()
