"""Where a gap between SetFit and transferlab's `setfit` lies: in the tuned body or in the head fitted on it.

For each data set, size and seed (the samples and test set of bench/small_data.py), both bodies are tuned on the
same examples (SetFit 1.2.0 with its paper's settings, and transferlab's `setfit` strategy), and each body's
embeddings of the training and test texts are kept in --cache. Then every head in HEADS is fitted on every body's
training embeddings and scored on the test set, so body x head is a 2 x n table over the same seeds:

- `setfit`: SetFit's head, scikit-learn's `LogisticRegression()` on L2-normalised embeddings (SetFit's
  sentence-transformer ends in a Normalize module); transferlab's `setfit` strategy fits this head too;
- `setfit-balanced`: SetFit's head with scikit-learn's balanced class weights, which the `setfit` strategy now fits
  (`balanced_head`);
- `probe`: transferlab's `head` strategy's probe, the cross-validated logistic regression on standardised embeddings;
- `probe-normalised`: the same probe on L2-normalised embeddings;
- `probe-balanced`: the probe with scikit-learn's balanced class weights (`--class-weights balanced`).

A third body, `frozen`, is the pretrained body untuned: with the probe it is the `head` strategy on its last layer,
so the table also says how much of SetFit's lead over the head is the tuning of the body.

    .venv/bin/python bench/setfit_heads.py [--datasets election-tweets-2016,trec-questions,rt-polarity]
        [--per-class 8] [--seeds 5] [--cache runs/bench/setfit_heads]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.preprocessing import normalize  # rows scaled to unit L2 length

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small_data import ROOT, add_sample_arguments, run_setfit_library, samples, score  # noqa: E402


def setfit_library_embeddings(texts, labels, test_texts, seed, backbone, max_length) -> tuple[np.ndarray, np.ndarray]:
    """SetFit's tuned body's embeddings (normalised, as its model gives them) of the training and test texts."""
    model = run_setfit_library(texts, labels, test_texts, seed, backbone, max_length, predict=False)
    return model.model_body.encode(texts), model.model_body.encode(test_texts)


def transferlab_embeddings(texts, labels, test_texts, seed, backbone, max_length) -> tuple[np.ndarray, np.ndarray]:
    """transferlab's `setfit` body's pooled features of the training and test texts, before the scaling to unit length
    its own head reads them with (the `setfit` head below scales them back)."""
    from transferlab.estimator import TransferClassifier
    from transferlab.training.inference import pooled_features

    model = TransferClassifier(backbone=backbone, strategy="setfit", max_length=max_length, seed=seed).fit(texts, labels)
    model.model_.set_unit_length(False)
    pre = model.preprocessor_
    return tuple(pooled_features(model.model_, pre.encode(t), pre.collate, pre.length_of) for t in (texts, test_texts))


def frozen_embeddings(texts, labels, test_texts, seed, backbone, max_length) -> tuple[np.ndarray, np.ndarray]:
    """The pretrained body's pooled features, untuned: what the `head` strategy's probe reads (its last layer)."""
    from transferlab.backbones import build_classifier, load_preprocessor, resolve_backbone
    from transferlab.training.inference import pooled_features

    asset = resolve_backbone(backbone)
    model, pre = build_classifier(asset, [str(c) for c in np.unique(labels)], "mean"), load_preprocessor(asset, max_length)
    return tuple(pooled_features(model, pre.encode(t), pre.collate, pre.length_of) for t in (texts, test_texts))


BODIES = {"setfit-library": setfit_library_embeddings, "transferlab": transferlab_embeddings, "frozen": frozen_embeddings}


def _probe(train: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int, balanced: bool = False) -> np.ndarray:
    from transferlab.evaluation.probe import fit_probe
    from transferlab.settings import TrainingConfig
    from transferlab.strategies.head import FeatureExtraction

    probe = fit_probe(train, y, int(y.max()) + 1, FeatureExtraction().probe_settings(TrainingConfig(seed=seed), balanced=balanced))
    return (test @ probe.coef.T + probe.intercept).argmax(1)


def _setfit_head(train: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int, class_weight: str | None = None) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(class_weight=class_weight).fit(normalize(train), y).predict(normalize(test))


HEADS = {
    "setfit": _setfit_head,
    "setfit-balanced": lambda train, y, test, seed: _setfit_head(train, y, test, seed, "balanced"),
    "probe": _probe,
    "probe-normalised": lambda train, y, test, seed: _probe(normalize(train), y, normalize(test), seed),
    "probe-balanced": lambda train, y, test, seed: _probe(train, y, test, seed, balanced=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_arguments(parser, "election-tweets-2016,trec-questions,rt-polarity", "8")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "bench" / "setfit_heads")
    args = parser.parse_args()
    import sentence_transformers  # noqa: F401  (imported up front, as bench/small_data.py does)
    import setfit  # noqa: F401

    args.cache.mkdir(parents=True, exist_ok=True)
    table: dict[tuple, list[float]] = {}
    seconds: dict[tuple, list[float]] = {}
    for dataset, k, seed, inputs, labels, train, test in samples(args):
        texts, test_texts = [inputs[i] for i in train], [inputs[i] for i in test]
        for body, embed in BODIES.items():
            path = args.cache / f"{dataset}-{k}-{seed}-{body}.npz"
            if not path.exists():
                started = time.perf_counter()
                x, x_test = embed(texts, labels[train], test_texts, seed, args.backbone, args.max_length)
                np.savez(path.with_suffix(".tmp.npz"), train=x, test=x_test, seconds=time.perf_counter() - started)
                path.with_suffix(".tmp.npz").rename(path)
            cached = np.load(path)
            seconds.setdefault((dataset, k, body), []).append(float(cached["seconds"]))
            for head, fit in HEADS.items():
                f1 = score(labels[test], fit(cached["train"], labels[train], cached["test"], seed))["macro_f1"]
                table.setdefault((dataset, k, body, head), []).append(f1)
                print(f"{dataset} k={k} seed={seed} body={body} head={head}: macro-F1 {f1:.3f}", flush=True)
    print(summarize(table, seconds))


def summarize(table: dict[tuple, list[float]], seconds: dict[tuple, list[float]]) -> str:
    """Markdown: macro-F1 per body and head, mean +- std over seeds, and the paired gap to SetFit's body and head;
    seconds are the body's tuning with the embedding of the training and test texts."""
    lines = [
        "| data set | per class | body | head | macro-F1 | vs SetFit's body and head (paired) | body seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for (dataset, k, body, head), f1 in table.items():
        gaps = [a - b for a, b in zip(f1, table[(dataset, k, "setfit-library", "setfit")])]
        spent = seconds[(dataset, k, body)]
        lines.append(
            f"| {dataset} | {k} | {body} | {head} | {statistics.mean(f1):.3f} ± {statistics.stdev(f1) if len(f1) > 1 else 0:.3f} | "
            f"{statistics.mean(gaps):+.3f} ({sum(g > 0 for g in gaps)} of {len(gaps)} up) | "
            f"{statistics.mean(spent):.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
