"""A label-free domain-gap score in [0, 1]: how far the target data sits from what the backbone saw.

One signal per backbone family, mapped to [0, 1]:

- `bn_shift` (CNNs with batch normalisation): the pretrained network stores the ImageNet mean and
  variance of every BatchNorm input. The symmetric KL divergence between those Gaussians and the
  target's per-channel statistics (eval mode, forward pre-hooks), averaged over channels and layers,
  is d; the signal is d / (d + BN_HALF). The source statistics come with the weights: no reference data.
- `tokenizer` (text): subword fertility (tokens per word) relative to a reference sample of English
  review sentences (rt-polarity), and the unknown-token rate. Text the tokenizer was not built for
  (source code, another script) splits into many more pieces or into [UNK].
- `domain_auroc` (CNNs without batch normalisation only): a logistic regression on frozen pooled
  features separating the target from scikit-image photographs; 2 * (cross-validated AUROC - 0.5).
  Not used where the signals above exist: it saturates for any two different datasets (IMDB vs
  rt-polarity reviews 0.99, held-out photographs vs the reference photographs 1.00), so it cannot
  tell a small gap from a large one.

Thresholds come from the validation cases in tests/test_domain_gap.py (values in docs/findings.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from transferlab.backbones import Preprocessor, TransferModel
from transferlab.errors import UserError
from transferlab.training.inference import pooled_features

SAMPLE = 256  # target (and reference) inputs measured: stable statistics in a few seconds on 2 cores
BN_HALF = 1.0  # mean symmetric KL at which the BN signal reaches 0.5
FERTILITY_FULL = 1.0  # relative fertility increase (+100%: twice the tokens per word) at which the signal saturates
UNK_FULL = 0.05  # unknown-token rate at which the signal saturates
SMALL_BELOW, LARGE_FROM = 0.3, 0.6  # bucket thresholds on the score, between the validation cases (docs/findings.md)

# scikit-image photographs (no download needed): the reference for ImageNet CNNs.
REFERENCE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "clock", "brick", "gravel")


@dataclass
class GapScore:
    score: float
    bucket: str
    signal: str  # which measurement gave the score
    details: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        parts = ", ".join(f"{name} {value:.3g}" for name, value in self.details.items())
        return f"{self.bucket} (score {self.score:.2f} from {self.signal}: {parts})"


def gap_bucket(score: float) -> str:
    return "small" if score < SMALL_BELOW else "large" if score >= LARGE_FROM else "medium"


def domain_auroc(target: np.ndarray, reference: np.ndarray, seed: int = 0) -> float:
    """Cross-validated AUROC of a linear probe separating target features (1) from reference features (0)."""
    x = np.concatenate([target, reference])
    y = np.concatenate([np.ones(len(target)), np.zeros(len(reference))])
    folds = StratifiedKFold(min(5, len(target), len(reference)), shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced"))
    return float(np.mean(cross_val_score(probe, x, y, cv=folds, scoring="roc_auc")))


def symmetric_kl(mean_a: torch.Tensor, var_a: torch.Tensor, mean_b: torch.Tensor, var_b: torch.Tensor) -> torch.Tensor:
    """KL(a||b) + KL(b||a) between per-channel Gaussians."""
    return 0.5 * (var_a / var_b + var_b / var_a - 2) + 0.5 * (mean_a - mean_b) ** 2 * (1 / var_a + 1 / var_b)


def bn_shift(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> float | None:
    """Mean over BatchNorm layers of the channel-mean symmetric KL between the target's input statistics
    and the running statistics stored in the pretrained weights; None without BatchNorm layers."""
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    if not layers:
        return None
    sums: dict[nn.Module, list[torch.Tensor | int]] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double().transpose(0, 1).flatten(1)  # channels x values
        s = sums.setdefault(module, [0, 0, 0])
        s[0], s[1], s[2] = s[0] + x.sum(1), s[1] + (x * x).sum(1), s[2] + x.shape[1]

    hooks = [m.register_forward_pre_hook(record) for m in layers]
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    distances = []
    for m in layers:
        total, squares, n = sums[m]
        mean = total / n
        var = (squares / n - mean**2).clamp_min(0) + m.eps
        distances.append(symmetric_kl(mean, var, m.running_mean.double(), m.running_var.double() + m.eps).mean().item())
    return float(np.mean(distances))


def tokenizer_stats(tokenizer: Any, texts: Sequence[str]) -> tuple[float, float]:
    """(tokens per whitespace word, share of tokens that are the unknown token)."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    tokens = sum(len(row) for row in ids)
    words = sum(len(t.split()) for t in texts)
    unk = tokenizer.unk_token_id
    unknown = sum(row.count(unk) for row in ids) if unk is not None else 0
    return tokens / max(1, words), unknown / max(1, tokens)


def reference_sentences(n: int = SAMPLE, seed: int = 0) -> list[str]:
    """The offline reference sample of a text backbone's pretraining domain: English review sentences."""
    from transferlab.data.catalog import load_dataset

    data = load_dataset("rt-polarity")
    rng = np.random.default_rng(seed)
    return [data.inputs[i] for i in rng.choice(len(data), size=min(n, len(data)), replace=False)]


def photo_views(names: Sequence[str]) -> list[np.ndarray]:
    """Each scikit-image photograph whole and as five crops (corners and centre, 60% of each side)."""
    try:
        import skimage.data
    except ImportError:
        raise UserError("the reference photographs come from scikit-image: pip install scikit-image") from None
    views = []
    for name in names:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image  # stereo pairs
        h, w = image.shape[:2]
        ch, cw = int(0.6 * h), int(0.6 * w)
        corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
        views += [image] + [np.ascontiguousarray(image[y : y + ch, x : x + cw]) for y, x in corners]
    return views


def _unit(value: float, full: float) -> float:
    return float(min(1.0, max(0.0, value / full)))


def measure_gap(model: TransferModel, preprocessor: Preprocessor, target: Sequence[Any], seed: int = 0) -> GapScore:
    """The signal that applies to this backbone, its score and bucket. Runs on a sample of SAMPLE inputs."""
    rng = np.random.default_rng(seed)
    target = [target[i] for i in np.sort(rng.choice(len(target), size=min(SAMPLE, len(target)), replace=False))]
    if model.gap_signal == "tokenizer":
        reference = reference_sentences(seed=seed)
        fertility_t, unk_t = tokenizer_stats(preprocessor.tokenizer, target)
        fertility_r, _ = tokenizer_stats(preprocessor.tokenizer, reference)
        signal = max(_unit(fertility_t / fertility_r - 1, FERTILITY_FULL), _unit(unk_t, UNK_FULL))
        return _scored("tokenizer", signal, fertility=fertility_t, reference_fertility=fertility_r, unk_rate=unk_t)
    encoded = preprocessor.encode(target)
    shift = bn_shift(model, [preprocessor.collate(encoded[i : i + 32]) for i in range(0, len(encoded), 32)])
    if shift is not None:
        return _scored("bn_shift", shift / (shift + BN_HALF), bn_symmetric_kl=shift)
    reference = preprocessor.encode(photo_views(REFERENCE_PHOTOS))  # photographs: ImageNet's domain
    features = [pooled_features(model, part, preprocessor.collate, preprocessor.length_of, 32) for part in (encoded, reference)]
    auroc = domain_auroc(*features, seed=seed)
    return _scored("domain_auroc", _unit(2 * (auroc - 0.5), 1.0), auroc=auroc)


def _scored(signal: str, value: float, **details: float) -> GapScore:
    return GapScore(value, gap_bucket(value), signal, details)
