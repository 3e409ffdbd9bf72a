"""Data checks and the splits that keep copies together: expected values worked out by hand on small inputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from transferlab.config import load_run_config
from transferlab.data.checks import duplicate_groups, inspect, near_duplicate_pairs
from transferlab.data.sources import LabeledData
from transferlab.data.splits import cross_validation_splits, given_test_split, stratified_split

from .conftest import sentiment_texts


def test_texts_are_the_same_after_whitespace_and_case():
    texts = ["A good film", "a  good\tfilm ", "A GOOD FILM", "a good film!", "dull"]
    groups = duplicate_groups(texts)
    assert groups.tolist() == [0, 0, 0, 3, 4]


def test_images_are_the_same_when_their_bytes_are(tmp_path):
    a, b = np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8)
    assert duplicate_groups([a, b, a.copy(), a.reshape(2, 8)], "image").tolist() == [0, 1, 0, 3]
    for name, content in (("x.png", b"one"), ("y.png", b"two"), ("z.png", b"one")):
        (tmp_path / name).write_bytes(content)
    assert duplicate_groups([str(tmp_path / n) for n in ("x.png", "y.png", "z.png")], "image").tolist() == [0, 1, 0]


def test_inspect_counts_copies_conflicts_short_and_cut_texts():
    texts = ["good film", "Good film", "good film", "bad film", "bad  film", "fine", "a long enough text here"]
    labels = np.array([1, 1, 0, 0, 0, 1, 1])
    findings = inspect(
        texts, labels, ["neg", "pos"], duplicate_groups(texts), token_counts=np.array([4, 4, 4, 4, 4, 3, 9]), max_length=5, empty_rows=[8]
    )
    assert findings["exact_duplicates"]["groups"] == 2  # {0,1,2} and {3,4}
    assert findings["exact_duplicates"]["extra_copies"] == 3
    assert findings["exact_duplicates"]["largest"][0]["copies"] == 3
    assert findings["conflicting_labels"]["groups"] == 1
    assert findings["conflicting_labels"]["examples"][0]["labels"] == {"neg": 1, "pos": 2}
    assert findings["short"]["count"] == 6  # every text but the last has under 3 words
    assert findings["class_counts"] == {"neg": 3, "pos": 4}
    assert findings["imbalance_ratio"] == pytest.approx(4 / 3)
    assert findings["truncated"]["share"] == pytest.approx(1 / 7)
    assert findings["empty_dropped"] == {"count": 1, "rows": [8]}
    assert any("1 input(s) appear with conflicting labels" in w for w in findings["warnings"])


def test_short_counts_every_text_under_three_words():
    texts = ["one", "one two", "one two three"]
    assert inspect(texts, np.array([0, 1, 0]), ["a", "b"], duplicate_groups(texts))["short"]["count"] == 2


def test_near_duplicate_pairs_by_cosine_of_centred_features():
    x = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [-0.99, -0.14]])  # mean (0, 0)
    # cosines: (0,1) and (3,5) 0.990; (1,2) 0.14; (0,3) and (2,4) -1
    assert {tuple(p) for p in near_duplicate_pairs(x, 0.98, block=2)} == {(0, 1), (3, 5)}
    # a direction shared by every example (raw cosines all near 1) is taken out first
    assert {tuple(p) for p in near_duplicate_pairs(x + 100.0, 0.98)} == {(0, 1), (3, 5)}


def _repeated(distinct: int = 30, copies: int = 10) -> tuple[LabeledData, np.ndarray]:
    texts, labels = sentiment_texts(distinct, seed=3)
    data = LabeledData(texts * copies, np.array(labels * copies), ["negative", "positive"])
    return data, duplicate_groups(data.inputs)


def _sides(split, groups):
    return {name: set(groups[getattr(split, name)]) for name in ("train", "val", "test")}


def test_hold_out_split_keeps_copies_on_one_side():
    data, groups = _repeated()
    split = stratified_split(data, n_test=60, groups=groups)
    sides = _sides(split, groups)
    assert not (sides["train"] & sides["test"]) and not (sides["val"] & sides["test"]) and not (sides["train"] & sides["val"])
    assert len(split.test) == 60  # 6 whole groups of 10
    assert set(data.labels[split.test]) == {0, 1}


def test_asking_for_nearly_every_group_takes_them_all():
    """196 distinct inputs among 200 rows, 3 classes: 199 rows asked for leave no room for a stratified rest."""
    from transferlab.data.splits import _stratified_take

    texts, _ = sentiment_texts(196, seed=7)
    texts = texts + texts[:4]
    labels = np.array([i % 3 for i in range(196)] + [0, 1, 2, 0])
    groups = duplicate_groups(texts)
    taken, rest = _stratified_take(labels, np.arange(200), 199, 0, "training set", groups)
    assert len(taken) == 200 and len(rest) == 0
    taken, rest = _stratified_take(labels, np.arange(200), 100, 0, "training set", groups)
    assert 90 <= len(taken) <= 110 and not set(groups[taken]) & set(groups[rest])


def test_folds_keep_copies_on_one_side():
    data, groups = _repeated()
    splits = cross_validation_splits(data, None, 5, groups=groups)
    assert len(splits) == 5
    tested = np.concatenate([s.test for s in splits])
    assert sorted(tested.tolist()) == list(range(300))  # every example tested once
    for split in splits:
        sides = _sides(split, groups)
        assert not (sides["train"] | sides["val"]) & sides["test"]


def test_without_copies_the_split_is_the_plain_stratified_one():
    texts, labels = sentiment_texts(200)
    data = LabeledData(texts, np.array(labels), ["negative", "positive"])
    distinct = np.arange(200)
    grouped, plain = stratified_split(data, 100, 50, groups=distinct), stratified_split(data, 100, 50)
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(grouped, name), getattr(plain, name))
    for a, b in zip(cross_validation_splits(data, 100, 4, groups=distinct), cross_validation_splits(data, 100, 4)):
        assert np.array_equal(a.test, b.test)


def test_a_given_test_set_is_kept_and_its_copies_leave_training():
    texts, labels = sentiment_texts(100)
    train_texts, test_texts = texts[:80], texts[80:] + [texts[3].upper()]  # one test input repeats a training one
    data = LabeledData(train_texts + test_texts, np.array(labels[:80] + labels[80:] + [labels[3]]), ["negative", "positive"])
    groups = duplicate_groups(data.inputs)
    pool, test = np.arange(80), np.arange(80, 101)
    repeats_of_test = {i for i in range(80) if groups[i] in set(groups[test])}
    split = given_test_split(data, pool, test, None, None, 0.1, 0, groups)
    assert np.array_equal(split.test, test)
    assert split.removed == len(repeats_of_test) >= 1
    assert not repeats_of_test & (set(split.train.tolist()) | set(split.val.tolist()))


def test_a_given_validation_file_loses_its_copies_of_test_inputs():
    """Exact copies (case and spacing aside) shared by the user's validation and test files would choose checkpoints,
    and train the head, on test inputs: they leave validation, and the test file stays whole."""
    texts, labels = sentiment_texts(140)
    val_texts = texts[80:120] + [f"  {texts[125].upper()} ", texts[130]]  # two validation rows repeat test rows
    inputs = texts[:80] + val_texts + texts[120:]
    data = LabeledData(inputs, np.array(labels[:80] + labels[80:120] + [labels[125], labels[130]] + labels[120:]), ["negative", "positive"])
    groups = duplicate_groups(data.inputs)
    pool, val, test = np.arange(80), np.arange(80, 122), np.arange(122, 142)
    split = given_test_split(data, pool, test, val, None, 0.1, 0, groups)
    assert np.array_equal(split.test, test)
    assert split.removed_from_validation == 2 and np.array_equal(split.val, np.arange(80, 120))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "transferlab.cli", *map(str, args)], capture_output=True, text=True)


def test_thirty_sentences_repeated_ten_times(tmp_path, tiny_bert_dir):
    """The score comes from unseen inputs only, and the output names the 30 groups."""
    texts, labels = sentiment_texts(30, seed=5)
    path = tmp_path / "repeated.csv"
    pd.DataFrame({"review": texts * 10, "sentiment": [["neg", "pos"][y] for y in labels] * 10}).sample(frac=1, random_state=0).to_csv(
        path, index=False
    )
    from transferlab.recipes.experiment import prepare

    config = load_run_config(None, backbone=str(tiny_bert_dir), dataset=str(path), text_column="review", label_column="sentiment")
    experiment = prepare(config, log=lambda _: None)
    groups = duplicate_groups(experiment.data.inputs)
    for split in experiment.splits:
        assert not set(groups[split.test]) & set(groups[np.concatenate([split.train, split.val])])
    done = _cli("compare", "--backbone", tiny_bert_dir, "--dataset", path, "--text-column", "review", "--label-column", "sentiment",
                "--strategies", "head", "--out", tmp_path / "run")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "30 group(s) of exact duplicates (270 extra copies)" in done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data_checks"]["exact_duplicates"]["groups"] == 30
    assert (tmp_path / "run" / "label_issues.csv").is_file()


@pytest.mark.parametrize(
    "options, handling, weights",
    [
        ({}, "the training loss weights each class by N / (C n_c)", "balanced"),
        ({"class_weights": "balanced"}, "the training loss weights each class by N / (C n_c)", "balanced"),
        (
            {"class_weights": "none"},
            "trained unweighted (--class-weights none), fine-tuning can learn to leave the small classes out",
            "none",
        ),
        ({"oversample": True}, "--oversample resamples the smaller classes up to the largest", "balanced"),
    ],
)
def test_the_imbalance_warning_says_what_training_does_about_it(tmp_path, tiny_bert_dir, options, handling, weights):
    """At 7:1 the default class weights resolve to balanced, and the resolved config records it."""
    texts, _ = sentiment_texts(80, seed=3)
    path = tmp_path / "skewed.csv"
    pd.DataFrame({"text": texts, "label": ["common"] * 70 + ["rare"] * 10}).to_csv(path, index=False)
    from transferlab.recipes.experiment import prepare

    config = load_run_config(None, backbone=str(tiny_bert_dir), dataset=str(path), cv=1, n_test=20, **options)
    experiment = prepare(config, log=lambda _: None)
    assert f"classes are imbalanced 7.0:1 (largest to smallest): {handling}" in experiment.findings.summary["warnings"]
    assert experiment.config.resolved()["class_weights"] == weights


@pytest.mark.parametrize("common, rare, weights", [(40, 40, "none"), (50, 10, "none"), (51, 10, "balanced")])
def test_automatic_class_weights_start_past_five_to_one(tmp_path, tiny_bert_dir, common, rare, weights):
    """50:10 is 5:1, the last ratio left unweighted (counted on the training part: the whole file here, with a given test file)."""
    texts, _ = sentiment_texts(100, seed=4)
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    labels = ["common"] * common + ["rare"] * rare
    pd.DataFrame({"text": texts[: common + rare], "label": labels}).to_csv(train, index=False)
    pd.DataFrame({"text": texts[80:], "label": ["common", "rare"] * 10}).to_csv(test, index=False)
    from transferlab.recipes.experiment import prepare

    config = load_run_config(None, backbone=str(tiny_bert_dir), dataset=str(train), test_dataset=str(test))
    assert prepare(config, log=lambda _: None).config.class_weights == weights


def test_check_command_writes_its_findings(tmp_path, tiny_bert_dir):
    texts, labels = sentiment_texts(120, seed=2)
    labels = [1 - y if i < 6 else y for i, y in enumerate(labels)]  # six flipped labels
    texts[7] = "   "  # an empty row: left out, reported
    texts[8] = texts[9].upper()  # a copy
    path = tmp_path / "d.tsv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, sep="\t", index=False)
    done = _cli("check", "--backbone", tiny_bert_dir, "--dataset", path, "--out", tmp_path / "c")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "c" / "checks.json").read_text())
    checks = record["data_checks"]
    assert checks["empty_dropped"] == {"count": 1, "rows": [8]}  # data row 8 (1-based) is texts[7]
    assert checks["exact_duplicates"]["groups"] == 1
    issues = pd.read_csv(tmp_path / "c" / "label_issues.csv")
    assert list(issues.columns) == ["file", "row", "given_label", "suggested_label", "score", "input"]
    assert re.search(r"exact duplicates: 1 group", done.stdout)


@pytest.mark.slow  # three CLI subprocesses, 35 s; in-process, test_calibration compares predict with the run
def test_user_test_file_gives_the_metrics_predict_gives(tmp_path, tiny_bert_dir):
    """compare --test-dataset F and predict --input F on train's export with the same settings agree to 1e-6."""
    texts, labels = sentiment_texts(200, seed=4)
    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.csv"
    names = [["bad", "good"][y] for y in labels]
    pd.DataFrame({"body": texts[:150], "y": names[:150]}).to_json(train_file, orient="records", lines=True)
    pd.DataFrame({"body": texts[150:], "y": names[150:]}).to_csv(test_file, index=False)
    common = ["--backbone", tiny_bert_dir, "--dataset", train_file, "--test-dataset", test_file, "--text-column", "body",
              "--label-column", "y", "--epochs", "1"]  # fmt: skip
    done = _cli("compare", *common, "--strategies", "head", "--out", tmp_path / "cmp")
    assert done.returncode == 0, done.stderr
    compared = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert compared["n_test"] == 50
    done = _cli("train", *common, "--strategy", "head", "--out", tmp_path / "tr")
    assert done.returncode == 0, done.stderr
    done = _cli("predict", "--model", tmp_path / "tr" / "model", "--input", test_file, "--text-column", "body", "--label-column", "y",
                "--output", tmp_path / "p.csv")  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = dict(re.findall(r"(\w+) (\d\.\d{6})", done.stderr + done.stdout))
    for metric in ("accuracy", "macro_f1", "auroc", "mcc"):
        assert float(printed[metric]) == pytest.approx(compared["strategies"]["head"]["metrics"][metric]["mean"], abs=1e-6)


def test_a_test_file_with_an_unknown_class_is_refused(tmp_path, tiny_bert_dir):
    texts, labels = sentiment_texts(60)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"text": texts[:5], "label": [0, 1, 2, 0, 1]}).to_csv(tmp_path / "t.csv", index=False)
    done = _cli("compare", "--backbone", tiny_bert_dir, "--dataset", tmp_path / "a.csv", "--test-dataset", tmp_path / "t.csv",
                "--strategies", "head", "--out", tmp_path / "r")  # fmt: skip
    assert done.returncode == 2
    assert "class 2 does not occur in the training data" in done.stderr
    assert not (tmp_path / "r").exists()


def test_the_feature_checks_can_be_turned_off(tmp_path, tiny_bert_dir):
    """`label_issues: false` and `near_duplicate_cosine: null`: no forward pass for the checks, no label_issues.csv."""
    from transferlab.recipes.check import check

    texts, labels = sentiment_texts(80, seed=9)
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    (tmp_path / "run.yaml").write_text("label_issues: false\nnear_duplicate_cosine: null\n")
    config = load_run_config(tmp_path / "run.yaml", backbone=str(tiny_bert_dir), dataset=str(path))
    record = check(config, tmp_path / "c", log=lambda _: None)
    checks = record["data_checks"]
    assert "label_issues" not in checks and "near_duplicates" not in checks
    assert not (tmp_path / "c" / "label_issues.csv").exists()
    on = check(load_run_config(None, backbone=str(tiny_bert_dir), dataset=str(path)), tmp_path / "on", log=lambda _: None)
    assert "label_issues" in on["data_checks"] and "near_duplicates" in on["data_checks"]


def test_check_on_an_image_folder_finds_copied_files(tmp_path, tiny_cnn_dir):
    """Images: identical files are one group (content hash, whatever their names); --image-size reaches the CNN."""
    from PIL import Image

    from .conftest import bright_side_images

    images, labels = bright_side_images(40, seed=3)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "photos" / ["dark", "bright"][label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    (tmp_path / "photos" / "dark" / "copy-of-0.png").write_bytes((tmp_path / "photos" / "dark" / "0.png").read_bytes())
    done = _cli("check", "--backbone", tiny_cnn_dir, "--dataset", tmp_path / "photos", "--image-size", 32, "--cv", 1, "--n-test", 10,
                "--out", tmp_path / "c")  # fmt: skip
    assert done.returncode == 0, done.stderr
    checks = json.loads((tmp_path / "c" / "checks.json").read_text())
    assert checks["data_checks"]["exact_duplicates"]["groups"] == 1 and checks["data_checks"]["exact_duplicates"]["extra_copies"] == 1
    assert checks["config"]["image_size"] == 32


def test_copies_made_for_training_keep_their_source_group(tmp_path, tiny_bert_dir):
    """Oversampled repeats, augmented copies and a line repeated in the file all count as one example in the head's
    cross-validation: train + val hold as many groups as they hold distinct texts, and a repeated row shares its group."""
    from transferlab.recipes.experiment import fit_strategy, prepare

    texts, _ = sentiment_texts(80, seed=3)
    texts[1] = texts[0].upper()  # the same text to the duplicate check (case and spacing aside)
    path = tmp_path / "skewed.csv"
    pd.DataFrame({"text": texts, "label": ["common"] * 60 + ["rare"] * 20}).to_csv(path, index=False)
    config = load_run_config(
        None, backbone=str(tiny_bert_dir), dataset=str(path), cv=1, n_test=20, oversample=True, augment=["delete"], augment_copies=2
    )  # fmt: skip
    experiment = prepare(config, log=lambda _: None)
    data = fit_strategy(experiment, "head").data
    rows = data.train + data.val
    split = experiment.split
    distinct = {" ".join(texts[i].split()).casefold() for i in np.concatenate([split.train, split.val])}
    assert len(data.groups) == len(rows) and len(set(data.groups.tolist())) == len(distinct)
    assert len(data.train) == 3 * 2 * int((experiment.data.labels[split.train] == 0).sum())  # both classes grown, then tripled
    for i, row in enumerate(rows):  # oversampling repeats the very same encoded example
        assert all(data.groups[j] == data.groups[i] for j, other in enumerate(rows) if other is row)


def test_a_test_file_may_lack_a_class_and_the_checks_say_so(tmp_path, tiny_bert_dir):
    """The user's own test file is theirs to choose; the run goes on, and says which class it cannot score and which
    of its rows it left out."""
    from transferlab.recipes.experiment import prepare

    texts, _ = sentiment_texts(120, seed=5)
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    pd.DataFrame({"text": texts[:90], "label": ["a", "b", "c"] * 30}).to_csv(train, index=False)
    pd.DataFrame({"text": [*texts[90:], " "], "label": ["a", "b"] * 15 + ["a"]}).to_csv(test, index=False)
    config = load_run_config(None, backbone=str(tiny_bert_dir), dataset=str(train), test_dataset=str(test))
    experiment = prepare(config, log=lambda _: None)
    assert experiment.split.part("test").class_counts() == {"a": 15, "b": 15, "c": 0}
    warnings = experiment.findings.summary["warnings"]
    assert any(w.startswith("the test file has no example of class c") for w in warnings)
    assert f"1 empty input(s) of the test file {test} left out (rows 31)" in warnings  # scored on 30, and it says so


def test_a_class_named_like_a_missing_value_is_pointed_out():
    texts = ["one text here", "another text here", "a third one", "and a fourth"]
    warnings = inspect(texts, np.array([0, 1, 0, 1]), ["NA", "yes"], duplicate_groups(texts))["warnings"]
    assert "class 'NA' is how a missing label is often written; if those rows have no label, remove them" in warnings
    assert not any("missing label" in w for w in inspect(texts, np.array([0, 1, 0, 1]), ["no", "yes"], duplicate_groups(texts))["warnings"])
