"""Multi-label data (`--label-separator`): sets of labels read from a table, split by iterative stratification,
learnt with a sigmoid per label, decided by a threshold per label tuned on validation, measured by micro/macro-F1,
subset accuracy and per-label AUROC, and exported so that a plain transformers pipeline scores labels independently.
Expected values are computed here by hand, not by the code under test."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import NEGATIVE, NEUTRAL, POSITIVE
from transferlab.config import load_run_config
from transferlab.data.sources import encode_label_columns, encode_label_sets, label_keys
from transferlab.data.splits import cross_validation_splits, stratified_split
from transferlab.errors import UserError
from transferlab.evaluation.calibration import fit_temperature, tune_thresholds
from transferlab.evaluation.metrics import classification_metrics
from transferlab.recipes.compare import compare
from transferlab.recipes.loading import load_model
from transferlab.recipes.train import train
from transferlab.strategies import STRATEGIES

LABELS = ["negative", "positive", "story"]


def multi_label_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Sentences that may hold a positive word, a negative word and the word "story", each independently; the label
    cell names the ones present, joined by ";" (empty when none is)."""
    rng = random.Random(seed)
    neutral = [w for w in NEUTRAL if w != "story"]
    texts, cells = [], []
    for _ in range(n):
        words = rng.choices(neutral, k=rng.randint(3, 7))
        present = [name for name in LABELS if rng.random() < 0.5]
        for name in present:
            word = rng.choice(POSITIVE if name == "positive" else NEGATIVE if name == "negative" else ["story"])
            words.insert(rng.randrange(len(words) + 1), word)
        texts.append(" ".join(words))
        cells.append(";".join(present))
    return texts, cells


@pytest.fixture
def multi_label_csv(tmp_path):
    texts, cells = multi_label_texts(400)
    path = tmp_path / "tags.csv"
    pd.DataFrame({"text": texts, "tags": cells}).to_csv(path, index=False)
    return path


def _config(backbone, dataset, strategies, **overrides):
    values = dict(
        backbone=str(backbone),
        dataset=str(dataset),
        label_column="tags",
        label_separator=";",
        strategies=strategies,
        n_train=300,
        n_test=100,
        max_length=24,
        training={"epochs": 3, "batch_size": 16, "min_steps": 0},
    )
    return load_run_config(None, **(values | overrides))


def test_label_sets_are_read_into_a_matrix():
    raw = pd.Series(["b;a", "", " c ; a", "a"])
    matrix, names = encode_label_sets(raw, ";", "f.csv")
    assert names == ["a", "b", "c"]
    assert matrix.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 1], [1, 0, 0]]
    assert label_keys(matrix, names) == ["a;b", "", "a;c", "a"]
    # an empty CSV cell reads as missing: an example with none of the labels
    assert encode_label_sets(pd.Series(["a", None, "b"]), ";", "f.csv")[0].tolist() == [[1, 0], [0, 0], [0, 1]]


def test_label_columns_are_read_into_a_matrix():
    frame = pd.DataFrame({"text": ["x", "y", "z"], "toxic": [1, 0, 1], "insult": [True, False, False], "spam": [0.0, 1.0, 0.0]})
    matrix, names = encode_label_columns(frame, ["toxic", "insult", "spam"], "f.csv")
    assert names == ["toxic", "insult", "spam"]  # the user's column order, not sorted
    assert matrix.tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 0]]
    bad = frame.assign(spam=[0, 2, 0])
    with pytest.raises(UserError, match="row 2 has '2' in label column 'spam'"):
        encode_label_columns(bad, ["toxic", "spam"], "f.csv")
    with pytest.raises(UserError, match="row 3 has no value in label column 'toxic'"):
        encode_label_columns(frame.assign(toxic=[1, 0, None]), ["toxic", "spam"], "f.csv")
    with pytest.raises(UserError, match="'yes' in label column 'toxic'"):
        encode_label_columns(frame.assign(toxic=["yes", "no", "no"]), ["toxic", "spam"], "f.csv")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"label_columns": "negative", "label_separator": None}, "two or more columns"),
        ({"label_columns": "negative,", "label_separator": None}, "two or more columns"),
        ({"label_columns": "negative,positive", "label_separator": ";"}, "give one"),
        ({"label_columns": "negative,positive", "label_separator": None, "oversample": True}, "--oversample"),
    ],
)
def test_label_columns_options_are_checked(overrides, message, tiny_bert_dir, multi_label_csv):
    with pytest.raises(UserError, match=message):
        _config(tiny_bert_dir, multi_label_csv, ["head"], **overrides).validate()


def test_one_column_per_label_trains_and_predicts_like_sets_of_labels(tmp_path, tiny_bert_dir, multi_label_csv):
    """The same examples as 0/1 columns and as "a;b" cells give the same label matrix, split and scores; predict reads
    true labels from the columns."""
    from rich.console import Console

    from transferlab.recipes.predict import predict_command

    frame = pd.read_csv(multi_label_csv, keep_default_na=False)
    wide = frame[["text"]].assign(**{name: frame["tags"].map(lambda cell, n=name: int(n in cell.split(";"))) for name in LABELS})
    wide_csv = tmp_path / "wide.csv"
    wide.to_csv(wide_csv, index=False)
    runs = {}
    for name, dataset, layout in (
        ("sets", multi_label_csv, {}),
        ("columns", wide_csv, {"label_separator": None, "label_columns": ",".join(LABELS)}),
    ):
        config = _config(tiny_bert_dir, dataset, ["head"], cv=1, val_fraction=0.2, **layout)
        _, runs[name] = train(config, tmp_path / name, log=lambda _: None)
    assert runs["columns"]["label_names"] == LABELS
    assert runs["columns"]["strategies"]["head"]["metrics"]["micro_f1"]["mean"] == pytest.approx(
        runs["sets"]["strategies"]["head"]["metrics"]["micro_f1"]["mean"]
    )
    out = tmp_path / "predictions.csv"
    predict_command(tmp_path / "columns" / "model", None, None, wide_csv, "text", out, Console(), label_column=LABELS)
    written = pd.read_csv(out, keep_default_na=False)
    assert written["true_label"].tolist() == frame["tags"].map(lambda cell: ";".join(n for n in LABELS if n in cell.split(";"))).tolist()


def test_metrics_match_the_counts_by_hand():
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3], [0.7, 0.3, 0.6], [0.2, 0.1, 0.1]])
    # at 0.5: predicted [1,0,0], [0,1,0], [1,0,1], [0,0,0]
    # tp 3 (a twice, b once), fp 1 (c on row 3), fn 2 (c on row 1, b on row 3)
    scores = classification_metrics(labels, probs, 3)
    assert scores["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert scores["accuracy"] == pytest.approx(2 / 4)  # rows 2 and 4 exactly right
    f1_per_label = [1.0, 2 * 1 / (2 * 1 + 0 + 1), 0.0]  # a perfect; b: tp 1, fn 1; c: tp 0
    assert scores["macro_f1"] == pytest.approx(np.mean(f1_per_label))
    assert scores["hamming_loss"] == pytest.approx(3 / 12)
    # a: positives 0.9, 0.7 above negatives 0.1, 0.2 -> 1; b: 0.8 and 0.3 against 0.2, 0.1 -> 1; c: 0.4 against
    # 0.3, 0.6, 0.1 -> 2 of 3 pairs
    assert scores["auroc"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    # per-label thresholds: c from 0.35 on takes row 1 and keeps row 3 (0.6) as a false positive
    cut = classification_metrics(labels, probs, 3, threshold=[0.5, 0.25, 0.35])
    assert cut["micro_f1"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 0))


def test_one_temperature_undoes_a_known_overconfidence():
    """Labels drawn from sigmoid(z), logits 3z: the binary cross-entropy is lowest at T = 3."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, size=(4000, 4))
    labels = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(int)
    assert fit_temperature(3 * z, labels) == pytest.approx(3.0, rel=0.08)


def test_each_label_gets_the_cut_that_is_best_for_it():
    """Label 0 is present exactly when its probability is at least 0.25; label 1 from 0.75: the tuned cuts separate
    them, and a label the examples never carry keeps 0.5."""
    probs = np.array([[0.1, 0.6, 0.3], [0.25, 0.8, 0.2], [0.3, 0.75, 0.4], [0.05, 0.2, 0.1]])
    labels = np.array([[0, 0, 0], [1, 1, 0], [1, 1, 0], [0, 0, 0]])
    cuts = tune_thresholds(probs, labels, "micro_f1")
    assert 0.1 < cuts[0] <= 0.25 and 0.6 < cuts[1] <= 0.75 and cuts[2] == 0.5
    assert tune_thresholds(probs, labels, "auroc") is None


def test_splits_keep_every_label_in_training_and_copies_together(multi_label_csv):
    from transferlab.data.catalog import load_dataset
    from transferlab.data.checks import duplicate_groups

    data = load_dataset(str(multi_label_csv), label_column="tags", label_separator=";")
    groups = duplicate_groups(data.inputs, "text")
    split = stratified_split(data, n_train=200, n_test=100, groups=groups)
    for part in ("train", "val", "test"):
        share = data.labels[getattr(split, part)].mean(0)
        assert np.all(np.abs(share - data.labels.mean(0)) < 0.15), part  # iterative stratification keeps each label's share
    assert not set(groups[split.train]) & set(groups[split.test])
    folds = cross_validation_splits(data, 300, 3, groups=groups)
    tested = np.concatenate([f.test for f in folds])
    assert len(tested) == len(set(tested.tolist())) == 300 - sum(len(f.train) == 0 for f in folds)
    for fold in folds:
        assert not set(groups[fold.train]) & set(groups[fold.test])


# One of each kind in the fast suite (a fitted head, full and partial training, peft's low-rank and virtual tokens,
# our own adapters); the others, SetFit's pairs among them, in the slow one.
FAST = ("head", "full", "lora", "prefix", "houlsby")


@pytest.mark.parametrize("strategy", [s if s in FAST else pytest.param(s, marks=pytest.mark.slow) for s in sorted(STRATEGIES)])
def test_every_strategy_learns_independent_labels(strategy, tmp_path, tiny_bert_dir, multi_label_csv):
    """Every strategy trains on sets of labels (binary cross-entropy) and is scored as multi-label; the decision rule is a
    threshold per label chosen on validation."""
    config = _config(tiny_bert_dir, multi_label_csv, [strategy], cv=1, n_train=300, val_fraction=0.2)
    record = compare(config, tmp_path / "run", log=lambda _: None)
    summary = record["strategies"][strategy]
    if summary["status"] == "skipped":
        pytest.skip(summary["reason"])
    assert summary["status"] == "ok", summary
    metrics = {name: value["mean"] for name, value in summary["metrics"].items()}
    assert record["primary_metric"] == "micro_f1"
    assert {"micro_f1", "macro_f1", "accuracy", "auroc", "hamming_loss", "prior_baseline_micro_f1"} <= set(metrics)
    run = summary["runs"][0]
    assert len(run["decision_thresholds"]) == len(LABELS) and set(run["per_class"]) == set(LABELS)
    assert 0 <= metrics["micro_f1"] <= 1 and metrics["accuracy"] <= metrics["micro_f1"] + 1e-9


def test_text_augmentation_copies_each_set_of_labels(tmp_path, tiny_bert_dir, multi_label_csv):
    """Word deletion and swap keep a text's labels: its copies carry the same 0/1 row (a class id would not fit)."""
    from transferlab.data.augment import augment_texts

    rows = np.array([[1, 0, 1], [0, 1, 0]])
    texts, labels = augment_texts(["a b c d", "e f g h"], rows, ["delete", "swap"], copies=2, seed=0)
    assert len(texts) == 4 and labels == [[1, 0, 1], [1, 0, 1], [0, 1, 0], [0, 1, 0]]
    config = _config(tiny_bert_dir, multi_label_csv, ["head"], cv=1, augment=["delete", "swap"])
    summary = compare(config, tmp_path / "run", log=lambda _: None)["strategies"]["head"]
    assert summary["status"] == "ok", summary


def test_export_predict_and_a_plain_pipeline_agree(tmp_path, tiny_bert_dir, multi_label_csv):
    """A head trained on the words that name the labels: well above the label-prior baseline; the exported folder
    predicts sets of labels with independent probabilities, which a plain transformers pipeline reproduces."""
    from transformers import pipeline

    import transferlab.backbones  # noqa: F401 - registers the classifier with transformers' Auto classes
    from transferlab.recipes.predict import predict_command

    config = _config(tiny_bert_dir, multi_label_csv, ["head"], cv=1, val_fraction=0.2)
    _, record = train(config, tmp_path / "run", log=lambda _: None)
    metrics = {name: value["mean"] for name, value in record["strategies"]["head"]["metrics"].items()}
    assert metrics["micro_f1"] > metrics["prior_baseline_micro_f1"] + 0.2
    folder = tmp_path / "run" / "model"
    manifest = json.loads((folder / "transferlab.json").read_text())
    assert manifest["multi_label"] and manifest["label_separator"] == ";" and len(manifest["threshold"]) == 3
    texts = ["the film was great", "a dull story and lovely actors", "the plot was a film"]
    model = load_model(folder)
    probs = model.predict_proba(texts)
    assert probs.shape == (3, 3) and not np.allclose(probs.sum(1), 1)  # independent probabilities
    scores = pipeline("text-classification", model=str(folder), top_k=None)(texts)
    for row, answer in zip(probs, scores):
        by_name = {entry["label"]: entry["score"] for entry in answer}
        assert [by_name[name] for name in LABELS] == pytest.approx(row.tolist(), abs=1e-5)
    table = tmp_path / "new.csv"
    pd.DataFrame({"text": texts, "tags": ["positive", "negative;positive;story", ""]}).to_csv(table, index=False)
    out = tmp_path / "predictions.csv"
    from rich.console import Console

    predict_command(folder, None, None, table, "text", out, Console(), label_column="tags")
    written = pd.read_csv(out, keep_default_na=False)
    cuts = np.array(manifest["threshold"])
    expected = [";".join(name for name, p, cut in zip(LABELS, row, cuts) if p >= cut) for row in probs]
    assert written["label"].tolist() == expected
    assert written["true_label"].tolist() == ["positive", "negative;positive;story", ""]


def test_onnx_export_gives_the_same_independent_probabilities(tmp_path, tiny_bert_dir, multi_label_csv):
    from transferlab.deploy import OnnxClassifier
    from transferlab.recipes.export import export_model

    config = _config(tiny_bert_dir, multi_label_csv, ["head"], cv=1, val_fraction=0.2)
    train(config, tmp_path / "run", log=lambda _: None)
    export_model(tmp_path / "run" / "model", "onnx", tmp_path / "onnx")
    texts = ["the film was great", "a dull story"]
    onnx = OnnxClassifier(tmp_path / "onnx")
    assert onnx.multi_label
    assert onnx.predict_proba(texts) == pytest.approx(load_model(tmp_path / "run" / "model").predict_proba(texts), abs=1e-5)


def test_the_loss_is_binary_cross_entropy_per_label(tiny_bert_dir):
    from transferlab.backbones import build_classifier, resolve_backbone

    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), LABELS).eval()
    batch = {"input_ids": torch.tensor([[2, 5, 3], [2, 12, 3]]), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    out = model(**batch, labels=targets)
    p = torch.sigmoid(out.logits)
    by_hand = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert out.loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.parametrize(
    "option, message",
    [
        ({"class_weights": "balanced"}, "--class-weights balanced"),
        ({"oversample": True}, "--oversample"),
        ({"imbalance": 0.1}, "--imbalance"),
    ],
)
def test_single_class_balancing_is_refused(option, message, tiny_bert_dir, multi_label_csv):
    with pytest.raises(UserError, match=message):
        _config(tiny_bert_dir, multi_label_csv, ["head"], **option).validate()


def test_an_image_table_with_sets_of_labels_trains_a_cnn(tmp_path, tiny_cnn_dir):
    """Images whose left half, right half, both or neither are bright, labelled "left;right" as they are."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        image = rng.integers(0, 120, (32, 32)).astype(np.uint8)
        present = [side for side in ("left", "right") if rng.random() < 0.5]
        for side in present:
            image[:, slice(0, 16) if side == "left" else slice(16, 32)] += 100
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        rows.append((f"{i}.png", ";".join(present)))
    table = tmp_path / "images.csv"
    pd.DataFrame(rows, columns=["path", "sides"]).to_csv(table, index=False)
    config = load_run_config(
        None, backbone=str(tiny_cnn_dir), dataset=str(table), label_column="sides", label_separator=";", strategies=["full"],
        cv=1, n_train=120, n_test=40, val_fraction=0.45, image_size=32, training={"epochs": 2, "batch_size": 16, "min_steps": 0},
    )  # fmt: skip
    run, record = train(config, tmp_path / "run", log=lambda _: None)
    assert record["primary_metric"] == "micro_f1" and set(record["strategies"]["full"]["runs"][0]["per_class"]) == {"left", "right"}
    probs = load_model(tmp_path / "run" / "model").predict_proba([str(tmp_path / "0.png"), str(tmp_path / "1.png")])
    assert probs.shape == (2, 2) and np.all((probs > 0) & (probs < 1))


def test_serve_answers_with_a_set_of_labels(tmp_path, tiny_bert_dir, multi_label_csv):
    from fastapi.testclient import TestClient

    from transferlab.serve.app import create_app
    from transferlab.serve.tasks import MultiTaskModel

    piped = tmp_path / "piped.csv"  # another separator: the answer joins labels with the one the data used
    frame = pd.read_csv(multi_label_csv, keep_default_na=False)
    frame.assign(tags=frame["tags"].str.replace(";", " | ")).to_csv(piped, index=False)
    config = _config(tiny_bert_dir, piped, ["lora"], cv=1, val_fraction=0.2, label_separator="|")
    train(config, tmp_path / "run", keep_adapter=True, log=lambda _: None)
    folder = tmp_path / "run" / "model"
    texts = ["the film was great", "a dull story"]
    expected = load_model(folder).predict_proba(texts)
    cuts = json.loads((folder / "transferlab.json").read_text())["threshold"]
    with TestClient(create_app(MultiTaskModel(None, {"tags": folder}))) as client:
        answer = client.post("/v1/predict", json={"task": "tags", "inputs": texts}).json()
    for row, prediction in zip(expected, answer["predictions"]):
        assert [prediction["probabilities"][name] for name in LABELS] == pytest.approx(row.tolist(), abs=1e-5)
        assert prediction["labels"] == [name for name, p, cut in zip(LABELS, row, cuts) if p >= cut]
        assert prediction["label"] == "|".join(prediction["labels"])


def test_auto_searches_multi_label_data_on_its_headline_metric(tmp_path, tiny_bert_dir, multi_label_csv):
    from transferlab.recipes.auto import auto

    config = _config(tiny_bert_dir, multi_label_csv, ["head", "lora"], training={"epochs": 2, "batch_size": 16, "min_steps": 0})
    record = auto(config, tmp_path / "auto", budget_seconds=600, max_trials=3, log=lambda _: None)
    assert record["search"]["metric"] == "micro_f1"
    winner = record["search"]["winner"]["strategy"]
    assert (
        record["strategies"][winner]["metrics"]["micro_f1"]["mean"]
        > record["strategies"][winner]["metrics"]["prior_baseline_micro_f1"]["mean"]
    )


def test_validation_scores_a_model_still_below_one_half_at_its_tuned_cuts():
    """Early in training every label's probability sits near its frequency, under 0.5: at 0.5 nothing is predicted
    and micro-F1 is 0, which would stop the training early; at the cuts tuned on those examples the ranking shows."""
    from transferlab.evaluation.calibration import validation_metrics

    labels = (np.random.default_rng(0).random((60, 4)) < 0.2).astype(int)
    labels[0] = 1  # every label present
    probs = 0.1 + 0.2 * labels  # separable, but never 0.5
    assert classification_metrics(labels, probs, 4)["micro_f1"] == 0
    assert validation_metrics(labels, probs, 4, "micro_f1")["micro_f1"] == pytest.approx(1.0)


@pytest.mark.slow
def test_on_debtags_each_strategy_beats_the_label_prior(tmp_path):
    """Real multi-label data (Debian packages' descriptions and Debtags) on real weights: the frozen head, LoRA and full
    fine-tuning each score a higher test micro-F1 than predicting the labels' training frequencies."""
    import shutil

    if shutil.which("apt-cache") is None:
        pytest.skip("debtags reads Debian's package index (apt)")
    config = load_run_config(None, dataset="debtags", strategies=["head", "lora", "full"], cv=1, n_train=800, n_test=300)
    record = compare(config, tmp_path / "run", log=lambda _: None)
    for name, summary in record["strategies"].items():
        metrics = summary["metrics"]
        assert metrics["micro_f1"]["mean"] > metrics["prior_baseline_micro_f1"]["mean"] + 0.05, name
