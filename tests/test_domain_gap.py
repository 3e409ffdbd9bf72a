"""The domain-gap score: its math on tiny models, and its ordering of real cases."""

from __future__ import annotations

import gettext
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from transferlab.backbones import build_classifier, load_preprocessor, resolve_backbone
from transferlab.data.catalog import load_dataset
from transferlab.data.images import FASHION_MNIST_DIR
from transferlab.evaluation.domain_gap import (
    REFERENCE_PHOTOS,
    bn_shift,
    domain_auroc,
    gap_bucket,
    measure_gap,
    photo_views,
    symmetric_kl,
    tokenizer_stats,
)


class ConvBN(nn.Module):
    """One convolution and its BatchNorm, called the way bn_shift calls a CNN classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(pixel_values))

    def set_running_statistics(self, x: torch.Tensor) -> None:
        """Running mean and variance (plus eps) equal to the batch's own BatchNorm inputs."""
        with torch.no_grad():
            y = self.conv(x)
            self.bn.running_mean.copy_(y.mean((0, 2, 3)))
            self.bn.running_var.copy_(y.var((0, 2, 3), unbiased=False))


def test_symmetric_kl_is_zero_for_equal_gaussians_and_grows_with_the_shift():
    m, v = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])
    assert torch.allclose(symmetric_kl(m, v, m, v), torch.zeros(2))
    assert symmetric_kl(m + 1, v, m, v)[0].item() == pytest.approx(1.0)  # 0.5 * 1 * (1 + 1)
    assert symmetric_kl(m, 4 * v, m, v)[0].item() == pytest.approx(0.5 * (4 + 0.25 - 2))


def test_bn_shift_is_near_zero_when_the_target_matches_the_running_statistics():
    x = torch.randn(64, 3, 8, 8)
    model = ConvBN()
    model.set_running_statistics(x)
    assert bn_shift(model, [{"pixel_values": x[:32]}, {"pixel_values": x[32:]}]) == pytest.approx(0.0, abs=1e-4)
    assert bn_shift(model, [{"pixel_values": 3 * x + 2}]) > 1.0


def test_bn_shift_is_none_without_batch_norm():
    assert bn_shift(nn.Conv2d(3, 4, 3), [{"input": torch.randn(2, 3, 8, 8)}]) is None


def test_domain_auroc_is_chance_for_one_distribution_and_one_for_separable_ones():
    rng = np.random.default_rng(0)
    same = domain_auroc(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)))
    apart = domain_auroc(rng.normal(size=(200, 8)) + 3, rng.normal(size=(200, 8)))
    assert abs(same - 0.5) < 0.1, same
    assert apart > 0.99, apart


def test_tokenizer_stats_count_pieces_per_word_and_unknown_tokens(tiny_bert_dir):
    tokenizer = load_preprocessor(resolve_backbone(str(tiny_bert_dir))).tokenizer
    fertility, unk = tokenizer_stats(tokenizer, ["good film", "zzz qqq"])
    assert unk == pytest.approx(2 / 4)  # the tiny vocabulary knows 'good' and 'film' only
    assert fertility == pytest.approx(1.0)


def test_buckets_follow_the_documented_thresholds():
    assert [gap_bucket(s) for s in (0.0, 0.29, 0.3, 0.59, 0.6, 1.0)] == ["small", "small", "medium", "medium", "large", "large"]


# ---------------------------------------------------------------------------- real data


def _gap(backbone: str, inputs: list) -> float:
    asset = resolve_backbone(backbone)
    return measure_gap(build_classifier(asset, ["a", "b"]), load_preprocessor(asset), inputs)


def python_source_chunks() -> list[str]:
    """Four-line chunks of the standard library's own Python source: code, not English prose."""
    chunks = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:60]:
        lines = [line for line in path.read_text(errors="ignore").splitlines() if line.strip()][:40]
        chunks += ["\n".join(lines[i : i + 4]) for i in range(0, len(lines), 4)]
    return chunks


def translated_messages(language: str = "ja") -> list[str]:
    """Another script: the Japanese translations of Debian's programs' messages (gettext catalogues)."""
    texts = []
    for path in sorted(Path(f"/usr/share/locale/{language}/LC_MESSAGES").glob("*.mo")):
        with path.open("rb") as f:
            texts += [v for v in gettext.GNUTranslations(f)._catalog.values() if isinstance(v, str) and len(v) > 20]
    return texts


@pytest.mark.integration
def test_minilm_gap_orders_english_reviews_below_code_and_another_script():
    """Measured: rt-polarity 0.03, imdb 0.14 (small); Python source 0.98, Japanese 1.00 (large)."""
    japanese = translated_messages()
    if len(japanese) < 50:
        pytest.skip("no Japanese gettext catalogues under /usr/share/locale/ja")
    reviews = _gap("minilm-l6", load_dataset("imdb").inputs[:2000])
    same = _gap("minilm-l6", load_dataset("rt-polarity").inputs)
    code = _gap("minilm-l6", python_source_chunks())
    other_script = _gap("minilm-l6", japanese)
    assert same.bucket == reviews.bucket == "small", (same, reviews)
    assert code.bucket == other_script.bucket == "large", (code, other_script)
    assert same.score < reviews.score < code.score <= other_script.score


@pytest.fixture(scope="module")
def photo_gap():
    """Photographs not among the reference ones: a small gap for an ImageNet CNN."""
    gap = _gap("mobilenet-v2", photo_views(["stereo_motorcycle", "moon", "grass"]))
    assert gap.signal == "bn_shift" and gap.bucket == "small", gap
    return gap


@pytest.mark.integration
@pytest.mark.slow  # about 30 s of real weights; the BatchNorm-shift signal is checked on its own in the fast suite
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_mobilenet_gap_orders_photographs_below_fashion_mnist(photo_gap):
    """Measured (BatchNorm statistics): photographs 0.15 (small), Fashion-MNIST 0.66 (large)."""
    fashion = _gap("mobilenet-v2", load_dataset("fashion-mnist", modality="image").inputs[:1000])
    assert fashion.bucket == "large" and photo_gap.score < fashion.score, (photo_gap, fashion)


@pytest.mark.integration
@pytest.mark.slow  # the same ordering as on fashion-mnist
def test_mobilenet_gap_orders_photographs_below_mnist(photo_gap):
    """Measured: MNIST digits 0.72 (large)."""
    digits = _gap("mobilenet-v2", load_dataset("mnist-5k", modality="image").inputs)
    assert digits.bucket == "large" and photo_gap.score < digits.score, (photo_gap, digits)


def test_cnn_without_batch_norm_falls_back_to_the_linear_probe(tiny_cnn_dir):
    """Photographs against the reference photographs: inseparable; flat grey noise: separable."""
    asset = resolve_backbone(str(tiny_cnn_dir))
    model = build_classifier(asset, ["a", "b"])
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            model.set_submodule(name, nn.Identity())
    preprocessor = load_preprocessor(asset, image_size=64)
    same = measure_gap(model, preprocessor, photo_views(REFERENCE_PHOTOS))
    rng = np.random.default_rng(0)
    noise = measure_gap(model, preprocessor, [rng.integers(100, 110, (64, 64, 3), dtype=np.uint8) for _ in range(54)])
    assert same.signal == noise.signal == "domain_auroc"
    assert same.bucket == "small" and noise.bucket == "large", (same, noise)
