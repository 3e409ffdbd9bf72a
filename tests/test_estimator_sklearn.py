"""`TransferClassifier` keeps scikit-learn's estimator contract, so `clone`, `GridSearchCV` and pipelines work with it.

`check_estimator` as a whole feeds numeric arrays, which a text classifier cannot take; the checks below are the
ones that do not need to fit on numbers, plus the fit-time properties (`check_dont_overwrite_parameters`,
`check_estimators_overwrite_params`) written out by hand on texts."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.utils import estimator_checks
from sklearn.utils.validation import check_is_fitted

from transferlab.estimator import TransferClassifier

from .conftest import bright_side_images, sentiment_texts

CHECKS = [
    "check_parameters_default_constructible",
    "check_no_attributes_set_in_init",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_mixin_order",
    "check_estimator_tags_renamed",
    "check_do_not_raise_errors_in_init_or_set_params",
]


def _estimator(path, **params) -> TransferClassifier:
    """The head strategy on the tiny backbone: a forward pass and a logistic regression, seconds on a CPU."""
    return TransferClassifier(backbone=str(path), strategy="head", **params)


def _texts(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    texts, labels = sentiment_texts(n, seed=seed)
    return np.array(texts, dtype=object), np.array(["positive" if y else "negative" for y in labels])


@pytest.mark.parametrize("check", CHECKS)
def test_sklearn_estimator_check(check, tiny_bert_dir):
    getattr(estimator_checks, check)("TransferClassifier", _estimator(tiny_bert_dir))


def test_sklearn_check_estimators_unfitted(tiny_bert_dir):
    estimator_checks.check_estimators_unfitted("TransferClassifier", _estimator(tiny_bert_dir))


def test_predicting_before_fit_raises_not_fitted_error(tiny_bert_dir):
    with pytest.raises(NotFittedError):
        _estimator(tiny_bert_dir).predict(["the film was good"])


def test_fit_leaves_the_parameters_alone_and_adds_only_trailing_underscore_attributes(tiny_bert_dir):
    """scikit-learn's check_dont_overwrite_parameters and check_estimators_overwrite_params, on texts: fit neither
    rebinds nor mutates a constructor parameter (a dict included), and what it adds is public only with a trailing
    underscore. A fitted estimator passes check_is_fitted, and its clone is unfitted with equal parameters."""
    settings = {"c_grid": [0.1, 1.0], "cv_folds": 2}
    estimator = _estimator(tiny_bert_dir, strategy_settings=settings, min_steps=0)
    params_before = estimator.get_params(deep=False)
    settings_before = copy.deepcopy(settings)
    attributes_before = set(vars(estimator))

    X, y = _texts(40)
    assert estimator.fit(X, y) is estimator

    params_after = estimator.get_params(deep=False)
    assert params_after.keys() == params_before.keys()
    for name, value in params_before.items():
        assert params_after[name] is value, f"fit rebound the parameter '{name}'"
    assert settings == settings_before, "fit mutated the strategy_settings dict it was given"
    added = set(vars(estimator)) - attributes_before
    assert added and all(name.endswith("_") or name.startswith("_") for name in added), sorted(added)
    check_is_fitted(estimator)
    assert list(estimator.classes_) == ["negative", "positive"]

    fresh = clone(estimator)
    assert not set(vars(fresh)) - attributes_before  # no fitted attribute travels with the clone
    assert fresh.get_params(deep=False).keys() == params_before.keys()
    assert fresh.strategy_settings == settings and fresh.strategy_settings is not settings  # cloned, not shared


@pytest.mark.parametrize("layers", ["last", "auto"])  # auto asks for hidden states: transformers hooks them
def test_a_fitted_estimator_pickles_with_its_predictions(tiny_bert_dir, layers):
    """scikit-learn persists fitted estimators with pickle (joblib.dump), and joblib copies them between processes
    (cross_validate(return_estimator=True, n_jobs=2)): the copy must predict what the original predicts."""
    estimator = _estimator(tiny_bert_dir, strategy_settings={"cv_folds": 2, "layers": layers}).fit(*_texts(40))
    probe = ["the film was good", "a boring and dull plot", "the actors were superb"]
    copy_ = pickle.loads(pickle.dumps(estimator))
    np.testing.assert_allclose(copy_.predict_proba(probe), estimator.predict_proba(probe), rtol=0, atol=1e-6)
    assert list(copy_.predict(probe)) == list(estimator.predict(probe))


def test_grid_search_over_the_estimator(tiny_bert_dir):
    """A 2-fold GridSearchCV over pooling on 60 texts finishes, exposes best_params_ and a refitted best_estimator_,
    and each of its fold scores is what fitting a fresh estimator on that fold gives (computed here by hand)."""
    X, y = _texts(60)
    grid = {"pooling": ["mean", "cls"]}
    search = GridSearchCV(_estimator(tiny_bert_dir, strategy_settings={"cv_folds": 2}), grid, cv=2, scoring="accuracy")
    search.fit(X, y)

    assert search.best_params_ in [{"pooling": p} for p in grid["pooling"]]
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 2 and np.all((0 <= scores) & (scores <= 1))
    assert search.best_estimator_.get_params()["pooling"] == search.best_params_["pooling"]
    check_is_fitted(search.best_estimator_)
    predicted = search.predict(X)
    assert set(predicted) <= {"negative", "positive"}

    # GridSearchCV's cv=2 for a classifier is an unshuffled stratified 2-fold split: redo candidate 0 by hand
    folds = list(StratifiedKFold(n_splits=2).split(X, y))
    params = search.cv_results_["params"][0]
    for k, (train, test) in enumerate(folds):
        fitted = _estimator(tiny_bert_dir, strategy_settings={"cv_folds": 2}, **params).fit(X[train], y[train])
        accuracy = float((fitted.predict(X[test]) == y[test]).mean())
        assert search.cv_results_[f"split{k}_test_score"][0] == pytest.approx(accuracy, abs=1e-12)


def test_the_estimator_calibrates_on_its_own_validation_split(tiny_bert_dir):
    from transferlab.backbones.base import base_model
    from transferlab.evaluation.calibration import softmax

    texts, labels = sentiment_texts(600, seed=4)
    kept = TransferClassifier(backbone=str(tiny_bert_dir), strategy="full", epochs=1, min_steps=10, max_length=32)
    calibrated = kept.fit(texts, labels).predict_proba(texts[:50])
    temperature = base_model(kept.model_).config.calibration_temperature
    assert temperature != 1.0  # 60 validation examples: enough to fit it
    base_model(kept.model_).config.calibration_temperature = 1.0
    raw = kept.predict_proba(texts[:50])
    np.testing.assert_allclose(calibrated, softmax(np.log(raw), temperature), atol=1e-5)
    raw_kept = TransferClassifier(backbone=str(tiny_bert_dir), strategy="full", epochs=1, min_steps=10, max_length=32, calibration="none")
    np.testing.assert_allclose(raw_kept.fit(texts, labels).predict_proba(texts[:50]), raw, atol=1e-6)


def _watch_fit_data(monkeypatch) -> list[dict]:
    """The FitData the estimator hands its strategy, as keyword arguments."""
    from transferlab.training.loop import FitData

    seen: list[dict] = []
    monkeypatch.setattr("transferlab.estimator.FitData", lambda **kwargs: seen.append(kwargs) or FitData(**kwargs))
    return seen


def test_a_rare_class_neither_stops_the_validation_split_nor_leaves_it(tiny_bert_dir, monkeypatch):
    """600 examples hold out 60 to validate on; a class of one example stays in training (scikit-learn's stratified
    split refuses it; fine-tuning takes it, where the head's cross-validation would refuse it by name), and a class
    of two gives one to each side instead of rounding its 0.2 of a share away."""
    seen = _watch_fit_data(monkeypatch)
    texts, labels = _texts(600, seed=5)
    y = labels.astype(object)
    y[0], y[1], y[2] = "lonely", "pair", "pair"
    fitted = TransferClassifier(backbone=str(tiny_bert_dir), strategy="full", epochs=1, min_steps=2, max_length=16).fit(texts, y)
    assert list(fitted.classes_) == ["lonely", "negative", "pair", "positive"]
    val_labels = [int(f["labels"]) for f in seen[0]["val"]]
    train_labels = [int(f["labels"]) for f in seen[0]["train"]]
    assert len(val_labels) == 60 and len(train_labels) == 540
    assert val_labels.count(0) == 0 and train_labels.count(0) == 1
    assert val_labels.count(2) == 1 and train_labels.count(2) == 1
    assert abs(val_labels.count(1) - val_labels.count(3)) <= 2  # the two big classes stay near their 50:50


def test_copies_of_an_example_stay_on_one_side_of_the_validation_split(tiny_bert_dir, monkeypatch):
    """300 texts given twice: a copy validating beside its twin in training would pick checkpoints (and fit the
    temperature) on examples the model trained on."""
    seen = _watch_fit_data(monkeypatch)
    texts, labels = _texts(300, seed=6)
    twice, twice_labels = np.concatenate([texts, texts]), np.concatenate([labels, labels])
    TransferClassifier(backbone=str(tiny_bert_dir), strategy="full", epochs=1, min_steps=2, max_length=16).fit(twice, twice_labels)
    inputs = lambda features: {tuple(f["input_ids"]) for f in features}  # noqa: E731
    assert len(seen[0]["val"]) >= 50 and not inputs(seen[0]["val"]) & inputs(seen[0]["train"])


def test_sets_of_labels_are_refused_in_one_line(tiny_bert_dir):
    from transferlab.errors import UserError

    texts, _ = _texts(8)
    for y in ([[1, 0], [0, 1]] * 4, [["a", "b"], ["a"]] * 4):
        with pytest.raises(UserError, match="one label per example"):
            _estimator(tiny_bert_dir).fit(texts, y)


@pytest.mark.parametrize("augment, copies", [(None, 1), ("none", 1), ("delete", 2), ("delete, swap", 2)])
def test_text_augmentation_adds_a_copy_of_each_training_text(tiny_bert_dir, monkeypatch, augment, copies):
    seen = _watch_fit_data(monkeypatch)
    X, y = _texts(40)
    X[1] = f"  {X[0].upper()} "  # the same text to the duplicate check
    _estimator(tiny_bert_dir, augment=augment).fit(X, y)  # 40 * 0.1 validation texts are too few: all 40 train
    assert len(seen[0]["train"]) == 40 * copies and seen[0]["val"] == []
    assert seen[0]["mixup_alpha"] is None
    # the head's cross-validation counts each text once, with its copies and its duplicate
    groups = seen[0]["groups"]
    assert len(groups) == 40 * copies and len(set(groups.tolist())) == len({" ".join(x.split()).casefold() for x in X})
    assert groups[0] == groups[1]
    assert (groups[40:] == groups[: len(groups) - 40]).all()  # each augmented copy follows its text's group


@pytest.mark.parametrize("augment, mixup", [(None, False), ("flip", False), ("flip,mixup", True), ("mixup", True)])
def test_image_augmentation_and_mixup(tiny_cnn_dir, monkeypatch, augment, mixup):
    from transferlab.backbones.cnn import MIXUP_ALPHA

    seen = _watch_fit_data(monkeypatch)
    images, labels = bright_side_images(24)
    fitted = TransferClassifier(backbone=str(tiny_cnn_dir), strategy="full", augment=augment, epochs=1, min_steps=4, image_size=32)
    fitted.fit(images, labels)
    assert seen[0]["mixup_alpha"] == (MIXUP_ALPHA if mixup else None)
    assert len(seen[0]["train"]) == 24  # images are transformed per batch, not copied
    assert fitted.predict(images[:4]).shape == (4,)


@pytest.mark.parametrize(
    "backbone, augment, message",
    [("bert", "mixup", "unknown text augmentation mixup"), ("cnn", "delete", "unknown image augmentation delete")],
)
def test_an_augmentation_the_backbone_does_not_have_is_refused(tiny_bert_dir, tiny_cnn_dir, backbone, augment, message):
    from transferlab.errors import UserError

    path = tiny_bert_dir if backbone == "bert" else tiny_cnn_dir
    with pytest.raises(UserError, match=message):
        TransferClassifier(backbone=str(path), augment=augment).fit(*_texts(20))


# What the training steps compute in on a CPU with native bf16, written out by hand: fp16 is not native on a CPU,
# and the CNN family declines auto's bf16 there (its LoRA collapsed in bf16).
PRECISION_ON_A_BF16_CPU = {
    ("bert", "auto"): "bf16",
    ("bert", "fp32"): "fp32",
    ("bert", "bf16"): "bf16",
    ("bert", "fp16"): "fp32",
    ("cnn", "auto"): "fp32",
    ("cnn", "fp32"): "fp32",
    ("cnn", "bf16"): "bf16",
    ("cnn", "fp16"): "fp32",
}


@pytest.mark.parametrize("backbone, precision", sorted(PRECISION_ON_A_BF16_CPU))
def test_the_estimator_trains_in_the_precision_it_is_given(tiny_bert_dir, tiny_cnn_dir, monkeypatch, backbone, precision):
    """The record says what training computed in; the fitted model keeps fp32 weights whatever it trained in."""
    import torch

    monkeypatch.setattr("transferlab.training.inference.cpu_has_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path, (X, y) = (tiny_bert_dir, _texts(20)) if backbone == "bert" else (tiny_cnn_dir, bright_side_images(16))
    estimator = TransferClassifier(backbone=str(path), strategy="lora", epochs=1, min_steps=2, image_size=32, precision=precision)
    assert estimator.fit(X, y).training_precision_ == PRECISION_ON_A_BF16_CPU[backbone, precision]
    assert {p.dtype for p in estimator.model_.parameters()} == {torch.float32}


def test_a_precision_the_estimator_does_not_know_is_refused(tiny_bert_dir):
    from transferlab.errors import UserError

    with pytest.raises(UserError, match="precision must be one of auto, fp32, bf16, fp16, got 'fp8'"):
        _estimator(tiny_bert_dir, precision="fp8").fit(*_texts(20))


def _record_each_fit(monkeypatch) -> list[tuple]:
    """(FitData, TrainingConfig) of each strategy fit, recorded as the fit starts."""
    import transferlab.estimator as estimator_module

    seen: list[tuple] = []
    build = estimator_module.strategy_for

    def recording(*args):
        strategy = build(*args)
        fit = strategy.fit
        strategy.fit = lambda model, data, training: (seen.append((data, training)), fit(model, data, training))[1]
        return strategy

    monkeypatch.setattr(estimator_module, "strategy_for", recording)
    return seen


@pytest.mark.parametrize(
    "negatives, positives, expected", [(10, 10, "accuracy"), (12, 8, "accuracy"), (13, 7, "macro_f1"), (16, 4, "macro_f1")]
)
def test_the_estimator_scores_imbalanced_classes_by_macro_f1_as_the_command_line_does(
    tiny_bert_dir, monkeypatch, negatives, positives, expected
):
    """12:8 is 1.5:1, the last ratio still called balanced; 13:7 is past it, and accuracy would reward the majority."""
    seen = _record_each_fit(monkeypatch)
    X, _ = _texts(20)
    _estimator(tiny_bert_dir).fit(X, np.array(["negative"] * negatives + ["positive"] * positives))
    assert [training.headline_metric for _, training in seen] == [expected]


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1", "micro_f1", "precision", "recall", "f1", "auroc", "mcc"])
def test_the_estimator_takes_every_headline_metric(tiny_bert_dir, monkeypatch, metric):
    seen = _record_each_fit(monkeypatch)
    X, y = _texts(20)
    assert _estimator(tiny_bert_dir, metric=metric).fit(X, y).predict(X).shape == (20,)
    assert [training.headline_metric for _, training in seen] == [metric]


@pytest.mark.parametrize(
    "class_weights, negatives, expected",
    [("auto", 10, None), ("auto", 16, None), ("auto", 17, [20 / (2 * 17), 20 / (2 * 3)]), ("none", 17, None), ("balanced", 10, [1.0, 1.0])],
)
def test_the_estimator_weights_the_loss_as_class_weights_asks(tiny_bert_dir, monkeypatch, class_weights, negatives, expected):
    seen = _record_each_fit(monkeypatch)
    X, _ = _texts(20)
    _estimator(tiny_bert_dir, class_weights=class_weights).fit(X, np.array(["negative"] * negatives + ["positive"] * (20 - negatives)))
    weights = seen[0][0].class_weights
    assert weights is None if expected is None else np.allclose(weights, expected)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"metric": "f2"}, "metric must be one of accuracy, .*, got 'f2'"),
        ({"class_weights": "inverse"}, "class weights must be one of auto, none, balanced"),
    ],
)
def test_a_setting_the_estimator_does_not_know_is_refused(tiny_bert_dir, setting, message):
    from transferlab.errors import UserError

    with pytest.raises(UserError, match=message):
        _estimator(tiny_bert_dir, **setting).fit(*_texts(20))


@pytest.mark.parametrize("strategy, held_out", [("head", False), ("full", True)])
def test_the_temperature_is_fitted_on_logits_of_examples_the_model_did_not_fit(tiny_bert_dir, monkeypatch, strategy, held_out):
    """The head fits on the validation examples too, so its temperature must come from out-of-fold logits; full
    fine-tuning never trains on them, so its own logits there are held out already."""
    import transferlab.estimator as estimator
    from transferlab.backbones.base import base_model
    from transferlab.data.splits import validation_take
    from transferlab.evaluation.calibration import softmax

    seen = []
    monkeypatch.setattr(estimator, "fit_temperature", lambda logits, y: seen.append(logits) or 1.5)
    texts, labels = sentiment_texts(600, seed=5)  # 60 validate: enough to fit a temperature on
    fitted = TransferClassifier(backbone=str(tiny_bert_dir), strategy=strategy, epochs=1, min_steps=10, max_length=32).fit(texts, labels)
    _, ids = np.unique(labels, return_inverse=True)
    val = validation_take(ids, np.arange(len(texts)), fitted.val_fraction, fitted.seed)[0]
    base_model(fitted.model_).config.calibration_temperature = 1.0
    own = fitted.predict_proba([texts[i] for i in val])  # the fitted model's probabilities on its validation examples
    (logits,) = seen
    assert logits.shape == own.shape
    assert np.allclose(softmax(logits, 1.0), own, atol=1e-5) == held_out
