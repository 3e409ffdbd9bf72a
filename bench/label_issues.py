"""How well cleanlab finds injected label errors from the head's out-of-fold probabilities.

A stratified 2,000 sentences of rt-polarity, 5% of their labels flipped at random; frozen mean-pooled features
of the backbone, the linear probe's out-of-fold probabilities (evaluation/label_issues.py) and cleanlab's
ranked label issues. Reported per backbone over seeds: precision and recall of the k rows with the lowest
label quality score (k = the number flipped, so the two are equal), of the whole set cleanlab flags, and the
seconds taken; beside it, the plain baseline of flagging every row whose most probable class is not its
label. mpnet-base runs too when its asset package is installed (requirements/assets-large.txt).

rt-polarity has ambiguous and mislabelled sentences of its own, so an unflipped row that is flagged is not
necessarily a false alarm; a few are printed for reading.

    python bench/label_issues.py [--seeds 0 1 2] [--n 2000] [--flip 0.05]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from cleanlab.rank import get_label_quality_scores  # noqa: E402

from transferlab.backbones import (  # noqa: E402
    build_classifier,
    load_preprocessor,
    resolve_backbone,  # noqa: E402
)
from transferlab.data.catalog import load_dataset  # noqa: E402
from transferlab.data.splits import stratified_subset  # noqa: E402
from transferlab.errors import MissingAssetError  # noqa: E402
from transferlab.evaluation.label_issues import find_label_issues, out_of_fold_probabilities  # noqa: E402
from transferlab.evaluation.probe import ProbeSettings  # noqa: E402
from transferlab.training.inference import pooled_features  # noqa: E402

C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
COLUMNS = (
    ("precision_at_k", "precision@k"),
    ("recall_at_k", "recall@k"),
    ("flagged", "flagged"),
    ("flagged_precision", "flagged precision"),
    ("flagged_recall", "flagged recall"),
    ("oof_accuracy_clean", "out-of-fold accuracy (true labels)"),
    ("detect_s", "detection s"),
    ("features_s", "features s"),
)


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`round(fraction * n)` rows, each given another class chosen at random."""
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(labels), size=round(fraction * len(labels)), replace=False))
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, num_classes, size=len(flipped))) % num_classes
    return noisy, flipped


def run_seed(backbone: str, data, n: int, fraction: float, seed: int) -> tuple[dict, list[dict]]:
    subset = stratified_subset(data, n, seed)
    names = subset.label_names
    noisy, flipped = flip_labels(subset.labels, fraction, len(names), seed)
    asset = resolve_backbone(backbone)
    started = time.perf_counter()
    preprocessor = load_preprocessor(asset, max_length=128, image_size=224, normalization="auto", augment=[])
    model = build_classifier(asset, names).eval()
    encoded = preprocessor.encode(subset.inputs, noisy)
    with torch.no_grad():
        x = pooled_features(model, encoded, preprocessor.collate, preprocessor.length_of, 64)
    features_s = time.perf_counter() - started

    started = time.perf_counter()
    settings = ProbeSettings(c_grid=C_GRID, folds=5, seed=seed, metric="accuracy")
    probs = out_of_fold_probabilities(x, noisy, len(names), settings)
    issues = find_label_issues(probs, noisy, names)
    detect_s = time.perf_counter() - started

    truth = set(flipped.tolist())
    k = len(flipped)
    lowest = np.argsort(get_label_quality_scores(noisy, probs, method="self_confidence"), kind="stable")[:k]
    hits_at_k = len(truth & set(lowest.tolist()))
    flagged = set(issues["row"].tolist())
    hits = len(truth & flagged)
    disagree = set(np.flatnonzero(probs.argmax(1) != noisy).tolist())
    result = {
        "backbone": backbone,
        "seed": seed,
        "rows": len(noisy),
        "flipped": k,
        "precision_at_k": hits_at_k / k,
        "recall_at_k": hits_at_k / k,
        "flagged": len(flagged),
        "flagged_precision": hits / len(flagged) if flagged else float("nan"),
        "flagged_recall": hits / k,
        # the simplest baseline on the same probabilities: every row whose most probable class is not its label
        "predicted_neq_given": len(disagree),
        "predicted_neq_given_precision": len(truth & disagree) / len(disagree) if disagree else float("nan"),
        "predicted_neq_given_recall": len(truth & disagree) / k,
        "oof_accuracy_noisy": float((probs.argmax(1) == noisy).mean()),
        "oof_accuracy_clean": float((probs.argmax(1) == subset.labels).mean()),
        "detect_s": detect_s,
        "features_s": features_s,
        "skipped": issues.attrs.get("skipped"),
    }
    unflipped = issues[~issues["row"].isin(truth)].head(8)
    examples = [
        {"text": subset.inputs[r], "given": g, "suggested": s, "score": round(float(sc), 3)}
        for r, g, s, sc in zip(unflipped["row"], unflipped["given_label"], unflipped["suggested_label"], unflipped["score"])
    ]
    return result, examples


def mean_std(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--backbones", nargs="+", default=["minilm-l6", "mpnet-base"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/label_issues.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    data = load_dataset("rt-polarity")
    results, examples = [], {}
    for backbone in args.backbones:
        try:
            resolve_backbone(backbone)
        except MissingAssetError:
            continue  # the large assets are optional
        for seed in args.seeds:
            result, unflipped = run_seed(backbone, data, args.n, args.flip, seed)
            results.append(result)
            examples[f"{backbone} seed {seed}"] = unflipped
            print(json.dumps(result), flush=True)

    print()
    print("| backbone | seeds | rows | flipped | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|---" * (4 + len(COLUMNS)) + "|")
    for backbone in dict.fromkeys(r["backbone"] for r in results):
        runs = [r for r in results if r["backbone"] == backbone]
        cells = [mean_std([r[key] for r in runs], 0 if key == "flagged" else 1 if key.endswith("_s") else 3) for key, _ in COLUMNS]
        print(f"| {backbone} | {len(runs)} | {runs[0]['rows']} | {runs[0]['flipped']} | " + " | ".join(cells) + " |")
        baseline = [
            mean_std([r[f"predicted_neq_given{key}"] for r in runs], 0 if key == "" else 3) for key in ("", "_precision", "_recall")
        ]
        print(
            f"| {backbone}, baseline: predicted != given | {len(runs)} | {runs[0]['rows']} | {runs[0]['flipped']} | - | - | "
            + " | ".join(baseline)
            + " | | | |"
        )
    print()
    print("k = the number flipped, so precision@k = recall@k. Flagged but unflipped rows (rt-polarity has label noise of its own):")
    for where, rows in examples.items():
        for row in rows[:4]:
            print(f"  {where}: given {row['given']}, suggested {row['suggested']} (score {row['score']}): {row['text']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "unflipped_flagged": examples}, indent=2))


if __name__ == "__main__":
    main()
