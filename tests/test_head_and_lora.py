"""Exactness of the two places where transferlab transforms weights: the folded head and the merged LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from transferlab.backbones import TextPreprocessor, build_classifier, resolve_backbone
from transferlab.evaluation.probe import fold_standardisation
from transferlab.strategies import get_strategy

from .conftest import sentiment_texts


@pytest.mark.parametrize("num_classes", [2, 4])
def test_folded_head_reproduces_scaler_then_regression(num_classes):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 5.0, size=(200, 16))
    y = rng.integers(0, num_classes, size=200)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=0.3, max_iter=1000).fit(scaler.transform(x), y)
    coef, intercept = fold_standardisation(clf, scaler, num_classes)
    logits = torch.as_tensor(x @ coef.T + intercept)
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), clf.predict_proba(scaler.transform(x)), atol=1e-10)


def _batch(path):
    pre = TextPreprocessor.from_pretrained(str(path), 32)
    texts, _ = sentiment_texts(8)
    return pre.collate(pre.encode(texts))


def test_fresh_lora_gives_the_backbone_logits(tiny_backbone):
    """B = 0 at initialisation: wrapping changes nothing until training starts."""
    torch.manual_seed(0)
    model = build_classifier(resolve_backbone(str(tiny_backbone)), ["a", "b"], "mean").eval()
    batch = _batch(tiny_backbone)
    with torch.no_grad():
        plain = model(**batch).logits.clone()
        wrapped = get_strategy("lora").prepare(model).eval()
        torch.testing.assert_close(wrapped(**batch).logits, plain, atol=1e-5, rtol=0)


def test_merged_lora_equals_unmerged(tiny_backbone):
    torch.manual_seed(0)
    model = build_classifier(resolve_backbone(str(tiny_backbone)), ["a", "b"], "mean")
    strategy = get_strategy("lora", r=4)
    wrapped = strategy.prepare(model).eval()
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking, non-zero update
    batch = _batch(tiny_backbone)
    with torch.no_grad():
        unmerged = wrapped(**batch).logits.clone()
        merged = strategy.export(wrapped).eval()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(**batch).logits, unmerged, atol=1e-5, rtol=0)
        assert (unmerged - model.__class__.forward(merged, **batch).logits).abs().max() < 1e-5


def test_constant_features_get_zero_weight_and_bounded_head(tiny_bert_dir):
    """A feature with (almost) no spread must not blow up the folded head (it did: 1 / 2e-9)."""
    from transferlab.settings import TrainingConfig
    from transferlab.strategies.head import FeatureExtraction
    from transferlab.training.loop import FitData

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    x[:, 2] = 0.5 + 1e-9 * rng.normal(size=200)  # nearly constant
    y = (x[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(int)
    data = FitData([], [], lambda b: b, ["a", "b"])
    coef, intercept = FeatureExtraction()._fit_linear(x, y, 2, data, TrainingConfig())
    assert np.all(coef[:, 2] == 0) and np.abs(coef).max() < 100
    accuracy = ((x @ coef.T + intercept).argmax(1) == y).mean()
    assert accuracy > 0.85
