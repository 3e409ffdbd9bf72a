"""Small data: the optimizer-step floor, a handful of validation examples joining training, the head's layer
choice, and the SetFit strategy's pairs and contrastive objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transferlab.backbones import TextPreprocessor, build_classifier, resolve_backbone
from transferlab.settings import MIN_VALIDATION, TrainingConfig
from transferlab.strategies import get_strategy
from transferlab.strategies.contrastive import pairs
from transferlab.training.inference import predict_proba
from transferlab.training.loop import FitData, training_plan

from .conftest import sentiment_texts


def _data(pre: TextPreprocessor, n_train: int, n_val: int, seed: int = 0) -> tuple[FitData, list[dict]]:
    texts, labels = sentiment_texts(n_train + n_val + 200, seed=seed)
    features = pre.encode(texts, labels)
    data = FitData(features[:n_train], features[n_train : n_train + n_val], pre.collate, ["negative", "positive"], pre.length_of)
    return data, features[n_train + n_val :]


def test_the_plan_counts_the_steps_the_trainer_takes(tiny_bert_dir):
    """60 examples in batches of 16 are 3 full batches and one of 12: 4 steps an epoch, 8 in two epochs."""
    data, _ = _data(TextPreprocessor.from_pretrained(str(tiny_bert_dir), 32), 60, 0)
    cfg = TrainingConfig(epochs=2, batch_size=16, min_steps=0)
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), data.label_names, "mean")
    get_strategy("full").fit(model, data, cfg)
    taken = next(entry["step"] for entry in data.log_history if "train_runtime" in entry)
    assert taken == training_plan(data, cfg).steps == 8


def _examples(n: int) -> list[dict]:
    return [{"input_ids": [1, 2], "labels": i % 2} for i in range(n)]


@pytest.mark.parametrize(
    "n_train, n_val, epochs, min_steps, steps, max_steps, early_stopping",
    [
        (14, 2, 3, 100, 100, 100, False),  # 16 examples, one step an epoch: the floor binds, validation joins training
        (1800, 200, 3, 100, 3 * 113, -1, True),  # 112 full batches and a half one an epoch, 113 steps: the epochs decide
        (1800, 200, 0.1, 100, 100, 100, True),  # a tenth of an epoch is 12 steps: the floor binds
        (14, 2, 3, 0, 3, -1, False),  # no floor: 3 epochs of one step
    ],
)
def test_training_plan(n_train, n_val, epochs, min_steps, steps, max_steps, early_stopping):
    data = FitData(_examples(n_train), _examples(n_val), lambda b: b, ["a", "b"])
    plan = training_plan(data, TrainingConfig(epochs=epochs, batch_size=16, min_steps=min_steps))
    assert (plan.steps, plan.max_steps, plan.early_stopping) == (steps, max_steps, early_stopping)
    assert len(plan.train) == n_train + (0 if early_stopping else n_val)
    assert early_stopping == (n_val >= MIN_VALIDATION)
    evaluations = round(epochs * 2)  # evals_per_epoch
    assert plan.eval_every == (max(1, math.ceil(n_train / 16) // 2) if max_steps == -1 else max(1, steps // max(1, evaluations)))


def _optimizer_steps(log_history: list[dict]) -> int:
    return max(entry["step"] for entry in log_history if "step" in entry)


@pytest.mark.parametrize("name", ["full", "lora"])
def test_a_few_examples_still_train_the_step_floor(name, tiny_bert_dir):
    """16 examples, batch 16, 3 epochs are 3 steps: with the floor the run takes 40, its training loss falls, and the
    model has left its random head (its predictions differ from the untrained model's)."""
    pre = TextPreprocessor.from_pretrained(str(tiny_bert_dir), 32)
    data, test = _data(pre, 14, 2)
    torch.manual_seed(0)
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), data.label_names, "mean")
    untrained = predict_proba(model, test, pre.collate, pre.length_of)
    training = TrainingConfig(epochs=3, lr=1e-3, min_steps=40)
    fitted = get_strategy(name).fit(model, data, training)
    assert _optimizer_steps(data.log_history) == 40
    assert not any("eval_loss" in entry for entry in data.log_history), "2 validation examples must not pick checkpoints"
    losses = [entry["loss"] for entry in data.log_history if "loss" in entry]
    assert len(losses) >= 5 and np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    trained = predict_proba(get_strategy(name).export(fitted), test, pre.collate, pre.length_of)
    assert np.abs(trained - untrained).max() > 0.02


def _flattened_last_layer(path) -> torch.nn.Module:
    """A tiny BERT whose last layer outputs the same vector for every token (its final LayerNorm's weight is zero):
    the last layer's features carry nothing, the layer below still tells the sentiment word."""
    model = build_classifier(resolve_backbone(str(path)), ["negative", "positive"], "mean")
    with torch.no_grad():
        model.backbone.encoder.layer[-1].output.LayerNorm.weight.zero_()
    return model


def test_head_auto_takes_the_informative_layer(tiny_bert_dir):
    pre = TextPreprocessor.from_pretrained(str(tiny_bert_dir), 32)
    data, test = _data(pre, 150, 50)
    model = _flattened_last_layer(tiny_bert_dir)
    fitted = get_strategy("head", layers="auto").fit(model, data, TrainingConfig())
    choice = next(entry for entry in data.log_history if "head_layer" in entry)
    assert choice["head_layer"] == "second_to_last", choice
    assert choice["cv_accuracy_by_layer"]["last"] is None  # constant features: not even a candidate
    probs = predict_proba(fitted, test, pre.collate, pre.length_of)  # served through the model: it reads that layer
    assert (probs.argmax(1) == np.array([f["labels"] for f in test])).mean() >= 0.8


def test_head_auto_keeps_the_last_layer_when_it_is_better(tiny_bert_dir):
    """Cached features where the last layer separates the classes and the one below is noise."""
    pre = TextPreprocessor.from_pretrained(str(tiny_bert_dir), 32)
    data, _ = _data(pre, 80, 20)
    y = np.array([f["labels"] for f in data.train + data.val])
    rng = np.random.default_rng(0)
    informative = rng.normal(size=(len(y), 32)) + 2.0 * y[:, None]
    data.frozen_features = {"last": informative.astype(np.float32), "second_to_last": rng.normal(size=(len(y), 32)).astype(np.float32)}
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), data.label_names, "mean")
    get_strategy("head").fit(model, data, TrainingConfig())
    assert next(entry for entry in data.log_history if "head_layer" in entry)["head_layer"] == "last"
    assert model.config.feature_layers == "last"


def test_setfit_pairs_are_setfits_sampler_counted_by_hand():
    """SetFit's oversampling: `iterations` x n positive and as many negative pairs, positives of one class."""
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    found = pairs(labels, iterations=3, max_pairs=10_000, seed=0)
    assert len(found) == 2 * 3 * len(labels)
    assert sum(y for _, _, y in found) == 3 * len(labels)
    assert all((labels[i] == labels[j]) == (y == 1.0) for i, j, y in found)
    capped = pairs(labels, iterations=3, max_pairs=10, seed=0)
    assert len(capped) == 10 and set(capped) <= set(found)


def test_setfit_pairs_under_the_cap_are_those_setfit_draws_from_its_whole_list():
    """The cap is passed to SetFit's sampler so that it stops building its pair list early; where the cap does not
    bind, the pairs are those of the whole list, as SetFit itself draws them."""
    from setfit.sampler import ContrastiveDataset

    labels = np.random.default_rng(0).integers(0, 3, 60)
    whole = ContrastiveDataset(list(range(60)), labels.tolist(), multilabel=False, num_iterations=4)
    assert pairs(labels, iterations=4, max_pairs=10_000, seed=0) == [(p["sentence_1"], p["sentence_2"], p["label"]) for p in whole]
    capped = pairs(labels, iterations=20, max_pairs=120, seed=0)  # 20 x 60 x 2 would be 2,400
    assert len(capped) == 120 and len(set(capped)) == 120
    assert all((labels[i] == labels[j]) == (y == 1.0) for i, j, y in capped)


@pytest.mark.parametrize("n_val, paired", [(MIN_VALIDATION, 40), (8, 48)])
def test_setfit_pairs_leave_out_a_validation_split_that_chooses(n_val, paired, tiny_bert_dir, monkeypatch):
    """With MIN_VALIDATION validation examples the temperature and the threshold are chosen on them: no pair holds
    one. A handful chooses nothing and joins the pairs."""
    from transferlab.strategies import contrastive

    seen = []

    def recorded(labels, *args):
        seen.append(len(labels))
        return pairs(labels, *args)

    monkeypatch.setattr(contrastive, "pairs", recorded)
    pre = TextPreprocessor.from_pretrained(str(tiny_bert_dir), 16)
    data, _ = _data(pre, 40, n_val)
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), data.label_names, "mean")
    get_strategy("setfit", pair_iterations=1).fit(model, data, TrainingConfig())
    assert seen == [paired]
    assert data.validation_logits is not None and len(data.validation_logits) == n_val


def _mean_cosine(model, features: list[dict], pre, same: bool) -> float:
    from transferlab.training.inference import pooled_features

    x = torch.as_tensor(pooled_features(model, features, pre.collate, pre.length_of))
    x = torch.nn.functional.normalize(x, dim=1)
    y = np.array([f["labels"] for f in features])
    sims = (x @ x.T).numpy()
    mask = (y[:, None] == y[None, :]) if same else (y[:, None] != y[None, :])
    np.fill_diagonal(mask, False)
    return float(sims[mask].mean())


def test_setfit_pulls_classes_apart(tiny_bert_dir):
    """After the contrastive phase, held-out texts of one class are closer (cosine) than texts of different
    classes, by more than before it; and the head on top classifies them."""
    pre = TextPreprocessor.from_pretrained(str(tiny_bert_dir), 32)
    data, test = _data(pre, 24, 8)
    torch.manual_seed(0)
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), data.label_names, "mean")
    gap_before = _mean_cosine(model, test, pre, True) - _mean_cosine(model, test, pre, False)
    fitted = get_strategy("setfit", lr=1e-3, pair_iterations=20).fit(model, data, TrainingConfig())
    gap_after = _mean_cosine(fitted, test, pre, True) - _mean_cosine(fitted, test, pre, False)
    assert gap_after > gap_before + 0.03, (gap_before, gap_after)  # measured: 0.001 -> 0.068
    pair_steps = math.ceil(2 * 20 * 32 / 16)
    assert _optimizer_steps(data.log_history) == pair_steps  # one epoch over the pairs; the step floor is for classifiers
    probs = predict_proba(fitted, test, pre.collate, pre.length_of)
    assert (probs.argmax(1) == np.array([f["labels"] for f in test])).mean() >= 0.65  # chance is 0.5


def test_setfit_head_is_setfits_regression_on_unit_length_features(tiny_bert_dir, tmp_path):
    """The head reads the tuned body's mean-pooled features divided by their length, and a saved model does too; its
    probabilities are SetFit's head, scikit-learn's LogisticRegression() fitted on those features of every example."""
    from sklearn.linear_model import LogisticRegression

    from transferlab.backbones.text import TextClassifier
    from transferlab.training.inference import pooled_features

    pre = TextPreprocessor.from_pretrained(str(tiny_bert_dir), 32)
    data, test = _data(pre, 24, 8)
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), data.label_names, "mean")
    fitted = get_strategy("setfit", pair_iterations=1).fit(model, data, TrainingConfig())
    seen = pooled_features(fitted, test, pre.collate, pre.length_of)
    batch = pre.collate([{k: v for k, v in f.items() if k != "labels"} for f in test])
    with torch.no_grad():
        tokens = fitted.backbone(**batch).last_hidden_state.numpy()
    mask = batch["attention_mask"].numpy()[..., None]
    mean = (tokens * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(seen, mean / np.sqrt((mean**2).sum(1, keepdims=True)), atol=1e-5)
    examples = data.train + data.val
    setfit_head = LogisticRegression().fit(pooled_features(fitted, examples, pre.collate, pre.length_of), [f["labels"] for f in examples])
    probs = predict_proba(fitted, test, pre.collate, pre.length_of)
    np.testing.assert_allclose(probs, setfit_head.predict_proba(seen), atol=5e-3)  # lbfgs's tol, from another start
    fitted.save_pretrained(tmp_path)
    reloaded = TextClassifier.from_pretrained(tmp_path)
    np.testing.assert_allclose(pooled_features(reloaded, test, pre.collate, pre.length_of), seen, atol=1e-6)


@pytest.mark.parametrize("balanced_head", [True, False])
def test_setfit_head_gives_a_rare_class_balanced_weights(tiny_bert_dir, balanced_head):
    """On 24 negative and 4 positive examples the head is scikit-learn's LogisticRegression with balanced class weights
    (w_c = N / (C n_c): 0.58 and 3.5 here), or SetFit's unweighted one when asked; the two differ on these data, so
    the comparison tells them apart. (On equal classes the weights are 1: the test above.)"""
    from sklearn.linear_model import LogisticRegression

    from transferlab.training.inference import pooled_features

    pre = TextPreprocessor.from_pretrained(str(tiny_bert_dir), 32)
    texts, labels = sentiment_texts(256, seed=3)
    features = pre.encode(texts, labels)
    negatives = [f for f in features[:56] if f["labels"] == 0][:24]
    positives = [f for f in features[:56] if f["labels"] == 1][:4]
    data = FitData(negatives + positives, [], pre.collate, ["negative", "positive"], pre.length_of)
    test = features[56:]
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), data.label_names, "mean")
    fitted = get_strategy("setfit", pair_iterations=1, balanced_head=balanced_head).fit(model, data, TrainingConfig())
    x = pooled_features(fitted, data.train, pre.collate, pre.length_of)
    y = [f["labels"] for f in data.train]
    seen = pooled_features(fitted, test, pre.collate, pre.length_of)
    weighted = LogisticRegression(class_weight="balanced").fit(x, y).predict_proba(seen)
    plain = LogisticRegression().fit(x, y).predict_proba(seen)
    assert np.abs(weighted - plain).max() > 0.05
    probs = predict_proba(fitted, test, pre.collate, pre.length_of)
    np.testing.assert_allclose(probs, weighted if balanced_head else plain, atol=5e-3)


@pytest.mark.parametrize("alpha", [None, 0.2])
def test_mixup_blends_training_batches_only(alpha, tiny_cnn_dir):
    """Two flat images, black (class 0) and white (class 1): plain batches hold only their two pixel values; with
    mixup (timm's, per batch) the model trains on blends in between, and it still evaluates on the originals."""
    from transferlab.backbones import load_preprocessor

    asset = resolve_backbone(str(tiny_cnn_dir))
    pre = load_preprocessor(asset, image_size=32, augment=[])
    images = [np.full((32, 32), 255 * (i % 2), dtype=np.uint8) for i in range(64)]
    features = pre.encode(images, [i % 2 for i in range(64)])
    data = FitData(features[:48], features[48:], pre.collate, ["black", "white"], mixup_alpha=alpha)
    model = build_classifier(asset, data.label_names)
    pure = {round(float(v), 4) for v in pre.collate(features[:2])["pixel_values"].unique()}  # 3 channels x 2 images
    seen: dict[bool, set[float]] = {True: set(), False: set()}

    def record(module, args, kwargs):
        seen[module.training] |= {round(float(v), 4) for v in kwargs["pixel_values"].unique()}

    model.register_forward_pre_hook(record, with_kwargs=True)
    get_strategy("full").fit(model, data, TrainingConfig(epochs=1, batch_size=8, min_steps=0))
    assert len(pure) == 6
    assert seen[True] - pure if alpha else seen[True] <= pure


def test_mixup_keeps_the_class_weights(tiny_cnn_dir, monkeypatch):
    """A blended batch's loss is weighted by class as a plain one is: every training loss on soft targets gets them."""
    from transferlab.backbones import load_preprocessor

    asset = resolve_backbone(str(tiny_cnn_dir))
    pre = load_preprocessor(asset, image_size=32, augment=[])
    features = pre.encode([np.full((32, 32), 255 * (i % 2), dtype=np.uint8) for i in range(64)], [i % 2 for i in range(64)])
    weights = np.array([0.6, 3.0], dtype=np.float32)
    data = FitData(features[:48], features[48:], pre.collate, ["black", "white"], mixup_alpha=0.2, class_weights=weights)
    real = torch.nn.functional.cross_entropy
    soft_calls = []

    def watched(logits, target, *args, **kwargs):
        if target.is_floating_point():  # mixup's blended targets
            soft_calls.append(kwargs.get("weight"))
        return real(logits, target, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", watched)
    training = TrainingConfig(epochs=1, batch_size=8, min_steps=0)
    get_strategy("full").fit(build_classifier(asset, data.label_names), data, training)
    assert len(soft_calls) == len(training_plan(data, training).train) // 8  # every batch even-sized, so each one blended
    for weight in soft_calls:
        np.testing.assert_array_equal(weight.cpu().numpy(), weights)


def test_setfit_head_grid(tiny_bert_dir):
    """A grid of strengths brings back the cross-validated choice (each C scored in the run's log); none is refused."""
    from transferlab.errors import UserError

    with pytest.raises(UserError, match="head_c_grid"):
        get_strategy("setfit", head_c_grid=[])
    with pytest.raises(UserError, match="head_c_grid"):
        get_strategy("setfit", head_c_grid=[1.0, -0.1])
    pre = TextPreprocessor.from_pretrained(str(tiny_bert_dir), 32)
    data, _ = _data(pre, 24, 8)
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), data.label_names, "mean")
    get_strategy("setfit", pair_iterations=1, head_c_grid=[0.01, 100.0]).fit(model, data, TrainingConfig())
    assert [entry["C"] for entry in data.log_history if "C" in entry] == [0.01, 100.0]
    assert next(entry["chosen_C"] for entry in data.log_history if "chosen_C" in entry) in (0.01, 100.0)
