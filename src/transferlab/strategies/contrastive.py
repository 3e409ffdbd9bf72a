"""SetFit (Tunstall et al. 2022): contrastive fine-tuning of the body on pairs of labelled examples, then SetFit's
logistic head on the tuned features, scaled to unit length, with class weights that give a rare class its due.

Pairs of the same class are pulled to cosine similarity 1 and pairs of different classes pushed to 0, so a few
dozen examples give hundreds of training signals; the head then has well-separated features to fit. The pairs
come from SetFit's own sampler (`setfit.sampler.ContrastiveDataset`, over example indices) and the objective is
sentence-transformers' `CosineSimilarityLoss`, both run inside our Trainer, so the run keeps its seeds,
precision, checkpoints, divergence guard and measurements. The exported model is the usual classifier: the
tuned body, its pooling scaled to unit length, and a linear head.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.backbones.base import TransferModel
from transferlab.errors import UserError
from transferlab.settings import TrainingConfig
from transferlab.strategies.base import Strategy, TrainedStrategyConfig, register_strategy, set_trainable
from transferlab.strategies.head import FeatureExtraction
from transferlab.training.loop import FitData, train_with_trainer, training_plan


@dataclass
class ContrastiveConfig(TrainedStrategyConfig):
    lr: float = 2e-5  # SetFit's body learning rate
    pair_iterations: int = 20  # SetFit's num_iterations: 2 x this many pairs per training example
    # Contrastive pairs grow with the data; past this many the body trains on a random subset of them (SetFit's
    # own max_steps does the same). 20,000 pairs are 1,250 steps of 16.
    max_pairs: int = 20_000
    body_epochs: float = 1.0
    # SetFit's head: scikit-learn's LogisticRegression() at its default strength on the unit-length features as they
    # are, which makes the whole method SetFit's. At 8 examples per class, on the same tuned bodies, it beat the
    # `head` strategy's cross-validated C on standardised features by 1.6 points on election-tweets-2016 and 0.7 on
    # rt-polarity, and lost 0.5 on trec-questions (docs/benchmarks.md). More values: a cross-validated choice of C.
    head_c_grid: list[float] = field(default_factory=lambda: [1.0])
    # At one fixed C the regression cannot give a rare class the weight its few examples need: on sms-spam drawn in its
    # own proportions (56 ham, 8 spam) SetFit's head fell to 0.827 macro-F1 on either tuned body, while the same head
    # with balanced class weights reached 0.917-0.918 (bench/setfit_heads.py --natural, docs/benchmarks.md). With every
    # class the same size the weights are all 1: SetFit's own head, unchanged.
    balanced_head: bool = True

    def validate(self) -> None:
        super().validate()
        if self.pair_iterations < 1 or self.max_pairs < 2 or self.body_epochs <= 0 or not self.head_c_grid or min(self.head_c_grid) <= 0:
            raise UserError(
                f"setfit needs pair_iterations >= 1, max_pairs >= 2, body_epochs > 0 and positive head_c_grid values, got "
                f"{self.pair_iterations}, {self.max_pairs}, {self.body_epochs}, {self.head_c_grid}"
            )


class _Embedder(nn.Module):
    """The classifier's pooled features as a sentence embedding, the form sentence-transformers' losses call."""

    def __init__(self, model: TransferModel):
        super().__init__()
        self.model = model

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"sentence_embedding": self.model.forward_features(**features)}


class _PairObjective(nn.Module):
    """sentence-transformers' CosineSimilarityLoss on a batch of pairs, in the shape the Trainer calls."""

    MODEL_PREFIX = "loss.model.model."  # how the classifier's parameter names read from here

    def __init__(self, model: TransferModel):
        super().__init__()
        # SetFit's objective; CoSENT and AnglE, which sentence-transformers rates stronger, were not better here
        # (docs/findings.md, "Small data").
        from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

        self.loss = CosineSimilarityLoss(_Embedder(model))

    def forward(self, first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        # Each side in its own forward pass, as the loss does by default: one merged pass over both sides padded to
        # the longer was slower at 64 per class (297 s against 244 s, docs/benchmarks.md).
        return {"loss": self.loss([first, second], labels)}


def pairs(labels: np.ndarray, iterations: int, max_pairs: int, seed: int) -> list[tuple[int, int, float]]:
    """SetFit's pairs over example positions: (i, j, 1.0 for the same class else 0.0), at most `max_pairs`; `labels`
    are class ids, or an examples x labels 0/1 matrix."""
    from setfit.sampler import ContrastiveDataset

    multilabel = labels.ndim == 2  # SetFit pairs multi-label examples as similar when they share a label
    # SetFit draws iterations x n pairs of each kind from the front of its shuffled pair list, which it builds whole
    # unless told its cap: all n(n+1)/2 pairs, a dict each (2 million at n = 2,000). Past max_pairs, fewer iterations
    # give as many pairs, and the cap at exactly what is drawn keeps the pairs the same as the whole list would give.
    iterations = min(iterations, math.ceil(max_pairs / (2 * len(labels))))
    sampled = ContrastiveDataset(
        list(range(len(labels))), labels.astype(int).tolist(), multilabel=multilabel, num_iterations=iterations,
        max_pairs=2 * iterations * len(labels),
    )  # fmt: skip
    found = [(p["sentence_1"], p["sentence_2"], float(p["label"])) for p in sampled]
    if len(found) > max_pairs:
        keep = np.random.default_rng(seed).choice(len(found), max_pairs, replace=False)
        found = [found[k] for k in sorted(keep)]
    return found


@register_strategy
class Contrastive(Strategy):
    name = "setfit"
    summary = "SetFit: contrastive fine-tuning on pairs of labelled examples, then the logistic head (Tunstall 2022)"
    config_class = ContrastiveConfig
    # With MIN_VALIDATION examples or more its pairs leave validation out and the head's logits there are out of fold,
    # so a search can choose on them; with fewer, they join the pairs and nothing is chosen on them.
    validation_is_held_out = True
    requires = frozenset({"tokens"})  # pairs of sentences, as SetFit defines it

    def expected_trainable_params(self, model: TransferModel) -> int:
        return sum(p.numel() for p in model.parameters())

    def fit(self, model: TransferModel, data: FitData, training: TrainingConfig) -> nn.Module:
        cfg = self.config
        # The temperature and the threshold are chosen on the validation examples' logits, so the body must not see
        # them; a handful (under MIN_VALIDATION) chooses nothing, and joins the pairs as it joins every training plan.
        examples = training_plan(data, training).train
        labels = np.array([f["labels"] for f in examples])
        found = pairs(labels, cfg.pair_iterations, cfg.max_pairs, training.seed)
        unlabelled = [{k: v for k, v in f.items() if k != "labels"} for f in examples]

        def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "first": data.collate([unlabelled[b["first"]] for b in batch]),
                "second": data.collate([unlabelled[b["second"]] for b in batch]),
                "labels": torch.tensor([b["labels"] for b in batch]),
            }

        set_trainable(model, lambda name: True)  # the head gets no gradient from the pairs; it is fitted after
        pair_data = FitData(
            train=[{"first": i, "second": j, "labels": y} for i, j, y in found],
            val=[],
            collate=collate,
            label_names=data.label_names,
            workdir=data.workdir,
            log_history=data.log_history,
        )
        # The body trains on its pairs for `body_epochs`, as SetFit does: its pair count already scales with the data.
        body_training = dataclasses.replace(training, epochs=cfg.body_epochs, min_steps=0)
        scale = self.lr_scale(model, data, training)  # discriminative rates, by the classifier's parameter names
        by_name = None if scale is None else lambda name: scale(name.removeprefix(_PairObjective.MODEL_PREFIX))
        train_with_trainer(_PairObjective(model), pair_data, body_training, lr=self.learning_rate(training), lr_scale=by_name)
        # The pairs shaped the features' directions only (the loss is a cosine); their lengths are noise to the head.
        # SetFit's head reads unit-length features too (its sentence-transformer ends in a Normalize module).
        model.set_unit_length(True)
        head_data = dataclasses.replace(data, frozen_features=None)
        head = FeatureExtraction(layers="last", c_grid=list(cfg.head_c_grid), standardize=False, balanced=cfg.balanced_head)
        fitted = head.fit(model, head_data, training)
        data.validation_logits = head_data.validation_logits  # the head's out-of-fold logits, on examples no pair held
        set_trainable(fitted, lambda name: True)  # the body trained too: every parameter counts as trainable
        return fitted
