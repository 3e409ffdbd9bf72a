"""Honest comparisons: folds and seeds, the within-noise test, class imbalance, augmentation, the estimator."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from transferlab.data.augment import augment_texts
from transferlab.data.catalog import load_dataset
from transferlab.data.splits import cross_validation_splits, make_imbalanced
from transferlab.evaluation.stats import compare_to_best, fold_overlap, mean_std
from transferlab.training.sampling import balanced_class_weights, loss_class_weights, oversample

from .conftest import sentiment_texts


def _summary(values):
    return {"status": "ok", "metrics": {"accuracy": mean_std(values)}}


def test_mean_std_uses_the_sample_deviation():
    assert mean_std([0.7, 0.8, 0.9]) == {"mean": pytest.approx(0.8), "std": pytest.approx(0.1), "values": [0.7, 0.8, 0.9]}
    assert mean_std([0.5])["std"] == 0.0


def test_within_noise_by_paired_t_test():
    result = compare_to_best(
        {
            "a": _summary([0.80, 0.82, 0.81, 0.79, 0.83]),
            "b": _summary([0.79, 0.83, 0.80, 0.80, 0.82]),  # differences +0.01 -0.01 +0.01 -0.01 +0.01
            "c": _summary([0.60, 0.61, 0.62, 0.58, 0.63]),
        },
        "accuracy",
    )
    assert result["best"] == "a"
    assert result["others"]["b"]["within_noise"] is True and result["others"]["b"]["p_value"] > 0.5
    assert result["others"]["c"]["within_noise"] is False and result["others"]["c"]["p_value"] < 1e-4
    assert "paired t-test" in result["test"]


def test_on_one_test_set_a_steady_gap_must_also_clear_the_test_sets_noise():
    """Two deterministic strategies on one hold-out set of 200: 0.80 and 0.79 on every seed. The seeds' differences
    have no variance (the t-test alone says p = 0), but one point on 200 examples is 0.2 standard errors
    (sqrt((0.8 x 0.2 + 0.79 x 0.21) / 200) = 0.0404): within noise, p = 2 (1 - Phi(0.01 / 0.0404)) = 0.804."""
    strategies = {"a": _summary([0.80, 0.80, 0.80]), "b": _summary([0.79, 0.79, 0.79])}
    folds = compare_to_best(strategies, "accuracy")
    assert folds["others"]["b"]["within_noise"] is False and folds["others"]["b"]["p_value"] == 0.0
    shared = compare_to_best(strategies, "accuracy", shared_test=200)
    assert shared["others"]["b"]["within_noise"] is True
    assert shared["others"]["b"]["p_value"] == pytest.approx(0.804, abs=0.001) and "z-test" in shared["test"]
    far = compare_to_best({"a": _summary([0.90, 0.91, 0.92]), "b": _summary([0.70, 0.72, 0.71])}, "accuracy", shared_test=200)
    assert far["others"]["b"]["within_noise"] is False


def test_overlapping_folds_widen_the_t_tests_variance():
    """Five folds, differences 0.03 0.01 0.04 0.00 0.02: mean 0.02, s^2 = 0.001 / 4 = 2.5e-4. The plain t-test:
    t = 0.02 / sqrt(2.5e-4 / 5) = 2.83, p = 0.047 (4 df), a real gap. Each fold trains on 4/5 and tests on 1/5, so
    the training sets overlap: Nadeau and Bengio's correction takes (1/5 + 1/4) s^2, t = 1.89, p = 0.132, noise."""
    strategies = {"a": _summary([0.83, 0.81, 0.84, 0.80, 0.82]), "b": _summary([0.80, 0.80, 0.80, 0.80, 0.80])}
    plain = compare_to_best(strategies, "accuracy")
    assert plain["others"]["b"]["p_value"] == pytest.approx(0.0474, abs=1e-4) and plain["others"]["b"]["within_noise"] is False
    corrected = compare_to_best(strategies, "accuracy", test_to_train=1 / 4)
    assert corrected["others"]["b"]["p_value"] == pytest.approx(0.1324, abs=1e-4) and corrected["others"]["b"]["within_noise"]
    assert "Nadeau and Bengio" in corrected["test"]
    record = {"evaluation": {"folds": 5}, "n_test": 40, "n_train": 160}
    assert fold_overlap(record) == 0.25 and fold_overlap({**record, "evaluation": {"folds": 1}}) == 0.0


def test_seeds_on_the_same_folds_are_not_counted_as_more_folds():
    """The five folds above, each trained with 3 seeds that land on the same scores. Counted as 15 folds, the test
    would take (1/15 + 1/4) s^2 with s^2 = 3 x 0.001 / 14 and 14 df: t = 2.43, p = 0.029, a real gap. The seeds
    share their fold's training and test parts, so the test runs over the 5 fold means: p = 0.132 again."""
    a, b = [0.83, 0.81, 0.84, 0.80, 0.82], [0.80] * 5

    def seeded(values):
        runs = [{"fold": fold, "seed": seed} for fold in range(5) for seed in range(3)]
        return {**_summary([v for v in values for _ in range(3)]), "runs": runs}

    corrected = compare_to_best({"a": seeded(a), "b": seeded(b)}, "accuracy", test_to_train=1 / 4)
    assert corrected["others"]["b"]["p_value"] == pytest.approx(0.1324, abs=1e-4) and corrected["others"]["b"]["within_noise"]
    unpaired_by_fold = compare_to_best(
        {"a": _summary([v for v in a for _ in range(3)]), "b": _summary([0.80] * 15)}, "accuracy", test_to_train=1 / 4
    )
    assert unpaired_by_fold["others"]["b"]["p_value"] == pytest.approx(0.0293, abs=1e-4)


def test_balanced_weights_are_the_inverse_frequency_formula():
    labels = np.array([0] * 9 + [1])
    np.testing.assert_allclose(balanced_class_weights(labels, 2), [10 / (2 * 9), 10 / (2 * 1)])


@pytest.mark.parametrize(
    "choice, counts, expected",
    [
        ("none", [13, 7], None),
        ("balanced", [10, 10], [1.0, 1.0]),
        ("balanced", [12, 8], [20 / (2 * 12), 20 / (2 * 8)]),
        ("auto", [10, 10], None),
        ("auto", [13, 7], None),  # past 1.5:1, where macro-F1 becomes the headline metric, still unweighted
        ("auto", [50, 10], None),  # 5:1, the last ratio left unweighted
        ("auto", [51, 10], [61 / (2 * 51), 61 / (2 * 10)]),
        ("auto", [90, 6, 4], [100 / (3 * 90), 100 / (3 * 6), 100 / (3 * 4)]),
    ],
)
def test_loss_class_weights_for_each_choice(choice, counts, expected):
    labels = np.repeat(np.arange(len(counts)), counts)
    weights = loss_class_weights(choice, labels, len(counts))
    assert weights is None if expected is None else np.allclose(weights, expected)


def test_automatic_class_weights_leave_multi_label_targets_unweighted():
    targets = np.array([[1, 0]] * 9 + [[0, 1]])  # a 0/1 matrix: one column per label
    assert loss_class_weights("auto", targets, 2) is None


def test_oversampling_balances_only_the_given_indices():
    labels = np.array([0] * 90 + [1] * 10 + [1] * 50)
    training = np.arange(100)  # the last 50 (all class 1) are a test set and must not be drawn
    grown = oversample(training, labels, seed=0)
    assert np.bincount(labels[grown]).tolist() == [90, 90]
    assert grown.max() < 100 and set(range(100)) <= set(grown.tolist())


def test_imbalance_recipe_makes_nine_to_one(sentiment_csv):
    data = make_imbalanced(load_dataset(str(sentiment_csv)), 0.1, seed=0)
    counts = data.class_counts()
    assert counts["negative"] == 120 and counts["positive"] == round(120 * 0.1 / 0.9)  # the first largest class stays whole


def test_folds_are_stratified_and_partition_the_pool(sentiment_csv):
    data = load_dataset(str(sentiment_csv))
    splits = cross_validation_splits(data, 200, 5, seed=0)
    tests = np.concatenate([s.test for s in splits])
    assert len(tests) == 200 and len(set(tests.tolist())) == 200
    for s in splits:
        assert set(s.part("test").class_counts().values()) == {20}
        assert not set(s.test) & (set(s.train) | set(s.val))


def test_augmentation_deletes_and_swaps_words_reproducibly():
    texts = ["one two three four five six seven eight nine ten"] * 20
    new, labels = augment_texts(texts, np.ones(20, dtype=int), ["delete", "swap"], copies=2, seed=0)
    again, _ = augment_texts(texts, np.ones(20, dtype=int), ["delete", "swap"], copies=2, seed=0)
    assert new == again and len(new) == 40 and labels == [1] * 40
    words = set(texts[0].split())
    assert any(len(t.split()) < 10 for t in new)  # deletions happened
    assert any(sorted(t.split()) == sorted(words) and t != texts[0] for t in new)  # swaps happened
    assert all(set(t.split()) <= words for t in new)


def test_weighted_loss_in_the_trainer(tiny_bert_dir):
    from transformers import TrainingArguments

    from transferlab.backbones import build_classifier, resolve_backbone
    from transferlab.training.loop import _Trainer

    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), ["a", "b"], "mean").eval()  # no dropout: two equal passes
    weights = np.array([0.5, 4.0])
    trainer = _Trainer(model=model, class_weights=weights, args=TrainingArguments(output_dir="/tmp/unused", report_to=[]))
    inputs = {
        "input_ids": torch.tensor([[2, 5, 3], [2, 12, 3]]),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
        "labels": torch.tensor([0, 1]),
    }
    loss = trainer.compute_loss(model, dict(inputs))
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits, inputs["labels"], weight=torch.tensor([0.5, 4.0]))
    torch.testing.assert_close(loss, expected)


def test_cross_validated_compare_reports_spread(tmp_path, tiny_bert_dir):
    texts, labels = sentiment_texts(300, seed=2)
    rng = np.random.default_rng(0)
    noisy = [1 - y if rng.random() < 0.25 else y for y in labels]  # label noise: fold scores must differ
    pd.DataFrame({"text": texts, "label": noisy}).to_csv(tmp_path / "noisy.csv", index=False)
    out = tmp_path / "run"
    (tmp_path / "fast.yaml").write_text("training:\n  min_steps: 0\n")  # one epoch, not the 100-step floor, per fold
    args = [
        "compare",
        "--config",
        tmp_path / "fast.yaml",
        "--backbone",
        tiny_bert_dir,
        "--dataset",
        tmp_path / "noisy.csv",
        "--n-train",
        200,
        "--strategies",
        "head,full",
        "--epochs",
        1,
    ]
    done = subprocess.run([sys.executable, "-m", "transferlab.cli", *map(str, args), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["evaluation"]["folds"] == 5  # the default below 1,000 examples
    for name in ("head", "full"):
        accuracy = results["strategies"][name]["metrics"]["accuracy"]
        assert len(accuracy["values"]) == 5 and accuracy["std"] > 0
    pool = {c: sum(fold["test"][c] for fold in results["class_counts"]) for c in ("0", "1")}
    for fold in results["class_counts"]:  # stratified: each fold holds a fifth of every class
        assert all(abs(fold["test"][c] - pool[c] / 5) <= 1 for c in pool)
    assert results["comparison"]["best"] in ("head", "full")
    assert "within noise" in done.stdout or "worse" in done.stdout


def test_the_estimator_works_inside_cross_val_score(tiny_bert_dir):
    from sklearn.model_selection import cross_val_score

    from transferlab.estimator import TransferClassifier

    texts, labels = sentiment_texts(150, seed=3)
    names = np.array(["neg", "pos"])[labels]
    scores = cross_val_score(TransferClassifier(backbone=str(tiny_bert_dir), strategy="head"), texts, names, cv=3)
    assert len(scores) == 3 and scores.min() >= 0.8  # chance is 0.5
