"""The head's layer: the last layer or the one below, by size of data, and the rules that choose between them.

For each data set the frozen backbone (minilm-l6, 128 tokens) runs once over a pool of training texts and a fixed
stratified test set, keeping the pooled output of the last layer and of the one below. For each size n and seed,
n texts are drawn (stratified) from the pool and the head's own probe (`evaluation.probe.fit_probe`: logistic
regression on standardised features, C by 5-fold cross-validation, scored by macro-F1) is fitted on each layer.
Recorded per run: both layers' cross-validated and test macro-F1, and the paired p-value of their fold scores.

The rules compared offline on the same fits: `last` (always the last layer), `guarded` (the layer below only when
it wins the cross-validation beyond noise, p < 0.05: the head's `layers: auto` today), `mean` (the higher
cross-validated mean), and `oracle` (the better test score, the ceiling no rule can pass).

    .venv/bin/python bench/head_layer.py [--datasets rt-polarity,trec-questions,election-tweets-2016,bbc-news]
        [--sizes 16,32,64,128,256,512,1000,2000] [--seeds 5] [--out runs/bench/head_layer.jsonl]

Runs are appended one line each to --out and skipped when already there; the table is printed from the whole file.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from small_data import load_examples  # noqa: E402

BACKBONE = "minilm-l6"
MAX_LENGTH = 128
TEST_SIZE = 1000
POOL_SIZE = 2000
RULES = ("last", "guarded", "mean", "oracle")


def layer_features(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of the last layer and of the one below, from one forward pass."""
    import torch

    from transferlab.backbones import build_classifier, load_preprocessor, resolve_backbone
    from transferlab.training.inference import map_batches

    asset = resolve_backbone(BACKBONE)
    pre = load_preprocessor(asset, MAX_LENGTH)
    model = build_classifier(asset, ["a", "b"]).eval()
    states = map_batches(model, pre.encode(texts), pre.collate, lambda m, b: torch.stack(m.pooled_hidden_states(**b), 1), pre.length_of, 64)
    return np.ascontiguousarray(states[:, -1]), np.ascontiguousarray(states[:, -2])


def fit_both(features: dict[str, np.ndarray], labels: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int) -> dict:
    from sklearn.metrics import f1_score

    from transferlab.evaluation.probe import fit_probe
    from transferlab.evaluation.stats import paired_p_value
    from transferlab.strategies.head import FeatureExtraction, HeadConfig

    head = FeatureExtraction(HeadConfig())
    settings = head.probe_settings(_training(seed))
    k = int(labels.max()) + 1
    row: dict = {}
    folds = {}
    for layer, x in features.items():
        probe = fit_probe(x[train], labels[train], k, settings)
        predicted = (x[test] @ probe.coef.T + probe.intercept).argmax(1)
        row[f"cv_{layer}"] = probe.best_score
        row[f"test_{layer}"] = float(f1_score(labels[test], predicted, average="macro"))
        folds[layer] = np.array(probe.fold_scores)
    row["p_value"] = paired_p_value(folds["below"], folds["last"])
    return row


def _training(seed: int):
    from transferlab.settings import TrainingConfig

    return TrainingConfig(seed=seed, metric="macro_f1")


def chosen(row: dict, rule: str) -> str:
    if rule == "last":
        return "last"
    if rule == "guarded":
        return "below" if row["cv_below"] > row["cv_last"] and row["p_value"] < 0.05 else "last"
    if rule == "mean":
        return "below" if row["cv_below"] > row["cv_last"] else "last"
    return "below" if row["test_below"] > row["test_last"] else "last"


def summarize(rows: list[dict]) -> str:
    """Per data set and size: each rule's mean test macro-F1 over seeds, and how often the guarded rule moved."""
    lines = [
        "| data set | n | last | guarded | mean | oracle | below wins on test | guarded chose below |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, n in sorted({(r["dataset"], r["n"]) for r in rows}):
        group = [r for r in rows if r["dataset"] == dataset and r["n"] == n]
        cells = [f"{statistics.mean(r['test_' + chosen(r, rule)] for r in group):.3f}" for rule in RULES]
        wins = sum(r["test_below"] > r["test_last"] for r in group)
        moved = sum(chosen(r, "guarded") == "below" for r in group)
        lines.append(f"| {dataset} | {n} | {' | '.join(cells)} | {wins}/{len(group)} | {moved}/{len(group)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="rt-polarity,trec-questions,election-tweets-2016,bbc-news")
    parser.add_argument("--sizes", default="16,32,64,128,256,512,1000,2000")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "head_layer.jsonl")
    args = parser.parse_args()
    from sklearn.model_selection import train_test_split

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    done = {(r["dataset"], r["n"], r["seed"]) for r in rows}
    for dataset in args.datasets.split(","):
        texts, labels = load_examples(dataset)
        everything = np.arange(len(labels))
        test_size = min(TEST_SIZE, len(labels) // 3)
        pool, test = train_test_split(everything, test_size=test_size, stratify=labels, random_state=1234)
        pool = pool[: min(POOL_SIZE, len(pool))]
        order = np.concatenate([pool, test])
        started = time.perf_counter()
        last, below = layer_features([texts[i] for i in order])
        print(f"{dataset}: features of {len(order)} texts in {time.perf_counter() - started:.0f}s", flush=True)
        features = {"last": last, "below": below}
        y = labels[order]
        test_rows = np.arange(len(pool), len(order))
        for n in (int(v) for v in args.sizes.split(",")):
            if n > len(pool):
                continue
            for seed in range(args.seeds):
                if (dataset, n, seed) in done:
                    continue
                train = np.arange(len(pool)) if n == len(pool) else train_test_split(
                    np.arange(len(pool)), train_size=n, stratify=y[: len(pool)], random_state=seed
                )[0]  # fmt: skip
                if np.bincount(y[train]).min(initial=n) < 2 or len(np.unique(y[train])) < len(np.unique(y)):
                    continue  # a class with fewer than 2 examples: the head refuses such data too
                row = {"dataset": dataset, "n": n, "seed": seed, **fit_both(features, y, train, test_rows, seed)}
                rows.append(row)
                with args.out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(
                    f"{dataset} n={n} seed={seed}: last {row['test_last']:.3f}, below {row['test_below']:.3f}, p {row['p_value']:.3f}",
                    flush=True,
                )
    print(summarize(rows))


if __name__ == "__main__":
    main()
