"""Temperature scaling and the decision threshold are chosen on validation alone, their scores are the textbook
ones, and an exported model's probabilities and labels are the calibrated, thresholded ones."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar

from transferlab.config import load_run_config
from transferlab.evaluation.calibration import (
    THRESHOLD_GRID,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    softmax,
    tune_threshold,
)
from transferlab.evaluation.metrics import classification_metrics
from transferlab.recipes.loading import load_model
from transferlab.recipes.train import train

from .conftest import sentiment_texts


def _logits(scale: float, n: int = 600, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), labels] += 1.0
    return logits * scale, labels


@pytest.mark.parametrize("scale, direction, classes", [(5.0, "over", 3), (0.3, "under", 3), (5.0, "over", 2), (0.3, "under", 2)])
def test_the_temperature_is_the_log_loss_minimum(scale, direction, classes):
    logits, labels = _logits(scale, classes=classes)

    def log_loss(t: float) -> float:
        scaled = logits / t
        return float(np.mean(np.log(np.exp(scaled).sum(1)) - scaled[np.arange(len(labels)), labels]))

    expected = minimize_scalar(log_loss, bounds=(1e-3, 1e3), method="bounded", options={"xatol": 1e-8}).x
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(expected, rel=1e-4)
    assert fitted > 1 if direction == "over" else fitted < 1  # overconfident logits are cooled, underconfident warmed
    raw, scaled = softmax(logits), softmax(logits, fitted)
    assert expected_calibration_error(labels, scaled) < expected_calibration_error(labels, raw)
    assert (raw.argmax(1) == scaled.argmax(1)).all()  # the labels never change


def test_a_class_validation_lacks_still_counts_in_the_softmax():
    """A class of one example trains and never validates: its logit column is there and its label is not."""
    logits, labels = _logits(4.0, classes=4)
    kept = labels != 2
    logits, labels = logits[kept], labels[kept]
    by_hand = minimize_scalar(
        lambda t: np.mean(np.log(np.exp(logits / t).sum(1)) - logits[np.arange(len(labels)), labels] / t),
        bounds=(1e-3, 1e3), method="bounded", options={"xatol": 1e-8},
    ).x  # fmt: skip
    assert fit_temperature(logits, labels) == pytest.approx(by_hand, rel=1e-4)


def test_ece_and_brier_by_hand():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.57, 0.43], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    # confidences 0.9 (right), 0.8 (right), 0.57 (wrong), 0.55 (right); 0.55 and 0.57 share the bin [8/15, 9/15)
    expected_ece = (abs(1 - 0.9) + abs(1 - 0.8) + 2 * abs(0.5 - (0.57 + 0.55) / 2)) / 4
    assert expected_calibration_error(labels, probs) == pytest.approx(expected_ece, abs=1e-6)
    bins = reliability_bins(labels, probs)
    assert [(round(b["confidence"], 6), b["accuracy"], b["share"]) for b in bins] == [(0.56, 0.5, 0.5), (0.8, 1.0, 0.25), (0.9, 1.0, 0.25)]
    by_hand = np.mean([(0.1**2 + 0.1**2), (0.2**2 + 0.2**2), (0.57**2 + 0.57**2), (0.45**2 + 0.45**2)])
    assert brier_score(labels, probs) == pytest.approx(by_hand)


def _run(tiny_bert_dir, tmp_path, name: str, test_labels_flipped: bool = False, metric: str | None = None, **options) -> dict:
    texts, labels = sentiment_texts(760, seed=3)
    pd.DataFrame({"text": texts[:600], "label": labels[:600]}).to_csv(tmp_path / "train.csv", index=False)
    test = np.array(labels[600:])
    pd.DataFrame({"text": texts[600:], "label": 1 - test if test_labels_flipped else test}).to_csv(
        tmp_path / f"{name}-test.csv", index=False
    )
    config = load_run_config(
        None, backbone=str(tiny_bert_dir), dataset=str(tmp_path / "train.csv"), test_dataset=str(tmp_path / f"{name}-test.csv"),
        strategies=["full"], max_length=32, label_issues=False, **options,
        training={"epochs": 1, "batch_size": 16, "min_steps": 10, "metric": metric},
    )  # fmt: skip
    train(config, tmp_path / name, log=lambda _: None)
    return json.loads((tmp_path / name / "results.json").read_text())


def test_the_temperature_sees_validation_only_and_the_export_predicts_calibrated(tiny_bert_dir, tmp_path):
    record = _run(tiny_bert_dir, tmp_path, "a")
    flipped = _run(tiny_bert_dir, tmp_path, "b", test_labels_flipped=True)
    run = record["strategies"]["full"]["runs"][0]
    temperature = run["calibration"]["temperature"]
    assert temperature != 1.0 and record["n_val"] >= 50
    assert flipped["strategies"]["full"]["runs"][0]["calibration"]["temperature"] == temperature  # test labels play no part
    assert flipped["strategies"]["full"]["metrics"]["accuracy"]["mean"] == pytest.approx(1 - run["metrics"]["accuracy"])

    model_dir = tmp_path / "a" / "model"
    assert json.loads((model_dir / "transferlab.json").read_text())["temperature"] == temperature
    test = pd.read_csv(tmp_path / "a-test.csv")
    loaded = load_model(model_dir)
    calibrated = loaded.predict_proba(test["text"].tolist())
    loaded.model.config.calibration_temperature = 1.0
    raw = loaded.predict_proba(test["text"].tolist())
    np.testing.assert_allclose(calibrated, softmax(np.log(raw), temperature), atol=1e-5)
    assert expected_calibration_error(test["label"].to_numpy(), calibrated) == pytest.approx(run["metrics"]["ece"], abs=1e-5)
    assert expected_calibration_error(test["label"].to_numpy(), raw) == pytest.approx(run["calibration"]["ece_uncalibrated"], abs=1e-5)

    from sentence_transformers import SentenceTransformer

    from transferlab.deploy import OnnxClassifier
    from transferlab.recipes.export import export_model

    texts = test["text"].tolist()[:40]  # every export carries T: its probabilities are the calibrated ones
    np.testing.assert_allclose(
        OnnxClassifier(export_model(model_dir, "onnx", tmp_path / "onnx")).predict_proba(texts), calibrated[:40], atol=1e-4
    )
    encoded = SentenceTransformer(str(export_model(model_dir, "sentence-transformers", tmp_path / "st")), device="cpu").encode(texts)
    np.testing.assert_allclose(softmax(encoded), calibrated[:40], atol=1e-5)


def test_calibration_none_keeps_the_raw_probabilities(tiny_bert_dir, tmp_path):
    run = _run(tiny_bert_dir, tmp_path, "none", calibration="none")["strategies"]["full"]["runs"][0]
    assert run["calibration"]["temperature"] == 1.0
    assert run["metrics"]["ece"] == pytest.approx(run["calibration"]["ece_uncalibrated"])
    with pytest.raises(Exception, match="calibration must be temperature or none"):
        load_run_config(None, calibration="platt")


@pytest.mark.parametrize("metric", ["macro_f1", "f1", "mcc"])
def test_the_tuned_threshold_is_the_best_cut_on_the_grid(metric):
    rng = np.random.default_rng(1)
    labels = (rng.random(500) < 0.12).astype(int)  # 7:1
    p1 = np.clip(0.3 * labels + rng.normal(0.25, 0.15, 500), 0.001, 0.999)
    probs = np.stack([1 - p1, p1], 1)
    scores = {cut: classification_metrics(labels, probs, 2, cut)[metric] for cut in THRESHOLD_GRID}
    tuned = tune_threshold(probs, labels, metric)
    assert scores[round(tuned, 2)] == pytest.approx(max(scores.values()))
    assert scores[round(tuned, 2)] > classification_metrics(labels, probs, 2)[metric]  # argmax is worse on 7:1 data
    assert tune_threshold(probs, labels, "accuracy") is None and tune_threshold(np.ones((4, 3)) / 3, np.arange(4) % 3, "f1") is None


def test_the_threshold_is_tuned_on_validation_only_and_the_export_decides_with_it(tiny_bert_dir, tmp_path):
    record = _run(tiny_bert_dir, tmp_path, "t", metric="macro_f1")
    flipped = _run(tiny_bert_dir, tmp_path, "f", test_labels_flipped=True, metric="macro_f1")
    run = record["strategies"]["full"]["runs"][0]
    threshold = run["decision_threshold"]
    assert flipped["strategies"]["full"]["runs"][0]["decision_threshold"] == threshold  # test labels play no part
    assert record["strategies"]["full"]["decision_threshold"]["mean"] == threshold

    model_dir = tmp_path / "t" / "model"
    assert json.loads((model_dir / "transferlab.json").read_text())["threshold"] == threshold
    assert f"from P = {threshold:.2f} on (tuned on validation)" in (model_dir / "README.md").read_text()
    test = pd.read_csv(tmp_path / "t-test.csv")
    probs = load_model(model_dir).predict_proba(test["text"].tolist())
    expected = classification_metrics(test["label"].to_numpy(), probs, 2, threshold)
    assert expected["macro_f1"] == pytest.approx(run["metrics"]["macro_f1"], abs=1e-6)

    argmax = _run(tiny_bert_dir, tmp_path, "n", metric="macro_f1", threshold="none")["strategies"]["full"]["runs"][0]
    assert "decision_threshold" not in argmax
    assert argmax["metrics"]["macro_f1"] == pytest.approx(classification_metrics(test["label"].to_numpy(), probs, 2)["macro_f1"], abs=1e-6)


def test_the_head_leaves_out_of_fold_logits_for_its_validation_rows():
    """The head is fitted on the validation rows too: its temperature and threshold come from logits of probes that
    left each row out, not from its own (in-sample) predictions."""
    from transferlab.evaluation.probe import out_of_fold_logits
    from transferlab.settings import TrainingConfig
    from transferlab.strategies.head import FeatureExtraction
    from transferlab.training.loop import FitData

    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 8))
    y = (x[:, 0] + rng.normal(size=300) > 0).astype(int)
    data = FitData([{"labels": int(v)} for v in y[:240]], [{"labels": int(v)} for v in y[240:]], lambda b: b, ["a", "b"])
    head = FeatureExtraction()
    head._fit_linear(x, y, 2, data, TrainingConfig())
    settings = head.probe_settings(TrainingConfig())
    (c,) = [entry["chosen_C"] for entry in data.log_history if "chosen_C" in entry]
    assert data.validation_logits.shape == (60, 2)
    np.testing.assert_allclose(data.validation_logits, out_of_fold_logits(x, y, 2, settings, c)[240:])
