"""Every registered strategy x every tiny backbone family: trainable counts equal the strategy's formula,
one short fit runs, and only the parameters the strategy trains move. New strategies join automatically."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from transferlab.backbones import TextPreprocessor, build_classifier, load_preprocessor, resolve_backbone
from transferlab.settings import TrainingConfig
from transferlab.strategies import STRATEGIES, count_parameters, get_strategy
from transferlab.training.inference import predict_proba
from transferlab.training.loop import FitData

from .conftest import bright_side_images, sentiment_texts


def _fit_data(path, n=64):
    """The family's small learnable task: sentiment words for text, a brighter half for images (32 px)."""
    asset = resolve_backbone(str(path))
    pre = load_preprocessor(asset, max_length=32, image_size=32, augment=["crop", "flip"])
    inputs, labels = bright_side_images(n) if asset.family == "cnn" else sentiment_texts(n)
    features = pre.encode(inputs, labels)
    train, val = features[: n * 3 // 4], features[n * 3 // 4 :]
    return pre, FitData(
        train, val, pre.collate, ["negative", "positive"], pre.length_of, train_transform=getattr(pre, "train_transform", None)
    )


# Settings that keep a strategy's one short fit short: SetFit's 20 pair iterations over 48 examples are 240 steps.
QUICK = {"setfit": {"pair_iterations": 2}}


def _skip_if_unsupported(strategy, model) -> None:
    reason = strategy.unsupported_reason(model)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_trainable_parameters_equal_the_formula(name, any_tiny_backbone):
    model = build_classifier(resolve_backbone(str(any_tiny_backbone)), ["negative", "positive"], "mean")
    strategy = get_strategy(name)
    _skip_if_unsupported(strategy, model)
    expected = strategy.expected_trainable_params(model)
    prepared = strategy.prepare(model)
    trainable, total = count_parameters(prepared)
    assert trainable == expected
    assert 0 < trainable <= total


def test_lora_formula_by_hand(tiny_bert_dir):
    """r (d_in + d_out) per adapted matrix: 2 layers x {query, value} x 8 x (32 + 32), plus the 33 x 2 head."""
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), ["negative", "positive"], "mean")
    trainable, _ = count_parameters(get_strategy("lora", r=8).prepare(model))
    assert trainable == 2 * 2 * 8 * (32 + 32) + (32 + 1) * 2


# The tiny BERT's shape (conftest.TINY_SHAPE) and its parameter count worked out by hand, not by the predicates
# the strategies use: embeddings (word, position, token type, LayerNorm), then per layer query/key/value and the
# attention output (weights and biases), two LayerNorms, the feed-forward pair; the new head on mean pooling.
V, H, L, FF, P = 29, 32, 2, 64, 64  # vocabulary, hidden, layers, feed-forward width, positions
EMBEDDINGS = V * H + P * H + 2 * H + 2 * H
LAYER = 4 * (H * H + H) + 2 * (2 * H) + (H * FF + FF) + (FF * H + H)
HEAD = (H + 1) * 2
TOTAL = EMBEDDINGS + L * LAYER + HEAD
LAYER_BIASES = 4 * H + 2 * H + FF + H  # attention projections, LayerNorms, feed-forward


@pytest.mark.parametrize(
    "name, expected",
    [
        ("full", TOTAL),
        ("discriminative", TOTAL),
        ("lp-ft", TOTAL),
        ("gradual", TOTAL),  # every group trains by the last stage
        ("partial", TOTAL - EMBEDDINGS),  # by default the embeddings stay frozen
        ("head", HEAD),
        ("bitfit", H + L * LAYER_BIASES + HEAD),  # every bias (the embeddings' LayerNorm too) and the head
    ],
)
def test_trainable_parameters_by_hand(name, expected, tiny_bert_dir):
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), ["negative", "positive"], "mean")
    assert count_parameters(model) == (TOTAL, TOTAL)
    assert count_parameters(get_strategy(name).prepare(model))[0] == expected


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_strategy_that_says_it_leaves_the_backbone_frozen_trains_the_head_only(name, tiny_bert_dir):
    """`auto` runs these first as the cheap ones: after prepare, nothing but head parameters may require grad."""
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), ["negative", "positive"], "mean")
    prepared = get_strategy(name).prepare(model)
    head = {id(p) for p in model.head_parameters()}  # after prepare: a learned layer mix joins the head
    body = sum(p.numel() for p in prepared.parameters() if p.requires_grad and id(p) not in head)
    assert (body == 0) == (not STRATEGIES[name].trains_backbone)


def _pretrained_name(wrapped: str) -> str:
    """A parameter's name in the unwrapped model, whatever peft or our adapters wrapped around it."""
    name = wrapped.removeprefix("base_model.model.").removeprefix("base_model.")
    for wrapper in (".base_layer.", ".base.", ".modules_to_save.default."):
        name = name.replace(wrapper, ".")
    return name


def _takes_layer_decay(name: str) -> bool:
    return "layer_decay" in {f.name for f in dataclasses.fields(STRATEGIES[name].config_class)}


@pytest.mark.parametrize("name, layer_decay", [(n, None) for n in STRATEGIES] + [(n, 0.8) for n in STRATEGIES if _takes_layer_decay(n)])
def test_one_short_fit_moves_only_trainable_parameters(name, layer_decay, any_tiny_backbone):
    """Every strategy, and every one that takes discriminative learning rates with them (`--layer-decay`)."""
    torch.manual_seed(0)
    _, data = _fit_data(any_tiny_backbone)
    model = build_classifier(resolve_backbone(str(any_tiny_backbone)), ["negative", "positive"], "mean")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    strategy = get_strategy(name, **QUICK.get(name, {}), **({} if layer_decay is None else {"layer_decay": layer_decay}))
    _skip_if_unsupported(strategy, model)
    fitted = strategy.fit(model, data, TrainingConfig(epochs=1, batch_size=8, evals_per_epoch=1, min_steps=0))
    changed = set()
    for wrapped, p in fitted.named_parameters():
        original = _pretrained_name(wrapped)
        if ".original_module." in wrapped or original not in before or before[original].shape != p.shape:
            continue  # peft's frozen copy of the head, or a parameter the strategy added
        if not torch.equal(before[original], p.detach()):
            changed.add(original)
            assert p.requires_grad, f"{wrapped} is frozen but changed"
    assert changed, "nothing trained"
    merged = strategy.export(fitted)
    probs = predict_proba(merged, data.val, data.collate, data.length_of)
    assert probs.shape == (len(data.val), 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name, floor", [("head", 0.9), ("full", 0.7)])
def test_the_tiny_task_is_learned(name, floor, tiny_bert_dir):
    """A check that can fail: the sentiment word decides the label, and the pipeline must find it.
    (A random backbone needs a from-scratch learning rate for full fine-tuning.)"""
    pre = TextPreprocessor.from_pretrained(str(tiny_bert_dir), 32)
    texts, labels = sentiment_texts(500, seed=1)
    features = pre.encode(texts, labels)
    data = FitData(features[:300], features[300:360], pre.collate, ["negative", "positive"], pre.length_of)
    torch.manual_seed(0)
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), ["negative", "positive"], "mean")
    fitted = get_strategy(name).fit(model, data, TrainingConfig(epochs=3, lr=1e-3))
    probs = predict_proba(fitted, features[360:], pre.collate, pre.length_of)
    accuracy = float((probs.argmax(1) == np.array(labels[360:])).mean())
    assert accuracy >= floor, accuracy


def test_bitfit_refuses_a_backbone_without_biases(tiny_llama_dir, tiny_bert_dir):
    """A Llama-style decoder has bias-free projections and RMSNorm: BitFit would train its head alone."""
    llama = build_classifier(resolve_backbone(str(tiny_llama_dir)), ["a", "b"])
    linears = [m for m in llama.modules() if isinstance(m, torch.nn.Linear)]
    assert sum(m.bias is not None for m in linears) == 1  # the classifier's head only
    assert "has none" in get_strategy("bitfit").unsupported_reason(llama)
    assert get_strategy("bitfit").unsupported_reason(build_classifier(resolve_backbone(str(tiny_bert_dir)), ["a", "b"])) is None
