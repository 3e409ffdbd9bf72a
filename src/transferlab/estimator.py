"""A scikit-learn estimator around one strategy, for `cross_val_score`, `GridSearchCV` and pipelines.

from sklearn.model_selection import cross_val_score
from transferlab.estimator import TransferClassifier
cross_val_score(TransferClassifier(strategy="lora", epochs=2), texts, labels, cv=5, scoring="f1_macro")

With a CNN backbone, X holds image paths or pixel arrays instead of texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from transformers import set_seed

from transferlab.backbones import build_classifier, family_of, load_preprocessor, resolve_backbone
from transferlab.backbones.base import base_model
from transferlab.backbones.cnn import MIXUP_ALPHA
from transferlab.backbones.text import drop_output_capturing_hooks
from transferlab.config import strategy_for
from transferlab.data.augment import augment_texts
from transferlab.data.checks import duplicate_groups
from transferlab.data.sources import is_label_list, label_counts
from transferlab.data.splits import validation_take
from transferlab.errors import UserError
from transferlab.evaluation.calibration import fit_temperature
from transferlab.evaluation.metrics import default_metric
from transferlab.settings import MIN_STEPS, MIN_VALIDATION, TrainingConfig, check_class_weights
from transferlab.training.inference import default_device, precision_for, precision_in_use, predict_proba
from transferlab.training.loop import FitData, validation_logits
from transferlab.training.sampling import loss_class_weights


class TransferClassifier(ClassifierMixin, BaseEstimator):
    """Hyperparameters in the constructor; `fit` carves a stratified validation set out of X for early stopping
    when it would hold MIN_VALIDATION examples or more, and fits the calibration temperature on it
    (`calibration="temperature"`; `"none"` keeps the raw softmax). `augment` takes what `--augment` takes: text
    augmentations add a copy of each training example, image ones (mixup included) act on each batch. `precision`
    takes what `--precision` takes: `auto` trains in bf16 where the hardware computes it natively and the backbone
    family has not declined it; evaluation and the fitted model stay fp32. `metric` picks the checkpoint kept and the
    head's regularisation, as `--metric`; None chooses as the command line does (macro-F1 on imbalanced classes).
    `class_weights` takes what `--class-weights` takes (`auto`: balanced loss weights on imbalanced classes)."""

    def __init__(
        self,
        backbone: str = "minilm-l6",
        strategy: str = "head",
        strategy_settings: dict[str, Any] | None = None,
        epochs: float = 3,
        lr: float | None = None,
        batch_size: int = 16,
        max_length: int = 128,
        image_size: int = 224,
        augment: str | None = None,
        pooling: str = "mean",
        val_fraction: float = 0.1,
        class_weights: str = "auto",
        metric: str | None = None,
        calibration: str = "temperature",
        min_steps: int = MIN_STEPS,
        precision: str = "auto",
        seed: int = 0,
    ):
        self.backbone = backbone
        self.strategy = strategy
        self.strategy_settings = strategy_settings
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.max_length = max_length
        self.image_size = image_size
        self.augment = augment
        self.pooling = pooling
        self.val_fraction = val_fraction
        self.class_weights = class_weights
        self.metric = metric
        self.calibration = calibration
        self.min_steps = min_steps
        self.precision = precision
        self.seed = seed

    def _inputs(self, X: Sequence[Any]) -> list[Any]:
        return [str(x) for x in X] if family_of(self.asset_).inputs == "text" else list(X)

    def _augmentations(self, family: Any) -> list[str]:
        """`augment` as `--augment` reads it: comma-separated names, or none; None is the family's default."""
        if self.augment is None:
            return list(family.default_augment)
        chosen = [name.strip() for name in self.augment.split(",") if name.strip() not in ("", "none")]
        unknown = sorted(set(chosen) - set(family.augmentations))
        if unknown:
            raise UserError(f"unknown {family.inputs} augmentation {', '.join(unknown)}: choose from {', '.join(family.augmentations)}")
        return chosen

    def fit(self, X: Sequence[Any], y: Sequence[Any]) -> TransferClassifier:
        check_class_weights(self.class_weights)
        cells = np.asarray(y, dtype=object)
        if cells.ndim != 1 or any(is_label_list(cell) for cell in cells):
            raise UserError(
                "y holds sets of labels: the estimator takes one label per example; train multi-label data with the "
                "command line (--label-separator or --label-columns)"
            )
        self.classes_, labels = np.unique(np.asarray(y), return_inverse=True)
        self.asset_ = asset = resolve_backbone(self.backbone)
        family = family_of(asset)
        augment = self._augmentations(family)
        # text augmentation adds training copies below; image augmentation transforms each batch
        self.preprocessor_ = load_preprocessor(asset, self.max_length, self.image_size, augment=[] if family.augments_copies else augment)
        strategy = strategy_for(self.strategy, family, self.strategy_settings)
        set_seed(self.seed)
        model = build_classifier(asset, [str(c) for c in self.classes_], self.pooling).to(default_device())
        everything = np.arange(len(X))
        inputs = self._inputs(X)
        # copies of one example stay on one side of the validation split, and in one fold of the head's CV
        copies_of = duplicate_groups(inputs, family.inputs)
        if self.val_fraction * len(X) < MIN_VALIDATION:  # too few to pick checkpoints by: training takes them all
            fit_idx, val_idx = everything, everything[:0]
        else:
            val_idx, fit_idx = validation_take(labels, everything, self.val_fraction, self.seed, copies_of)
        features = self.preprocessor_.encode(inputs, labels)
        train = [features[i] for i in fit_idx]
        groups = copies_of[fit_idx]
        if family.augments_copies and augment:
            copies, copy_labels = augment_texts([inputs[i] for i in fit_idx], labels[fit_idx], augment, 1, self.seed)
            train += self.preprocessor_.encode(copies, copy_labels)
            groups = np.concatenate([groups, groups])  # one copy of each, in order
        data = FitData(
            train=train,
            val=[features[i] for i in val_idx],
            collate=self.preprocessor_.collate,
            label_names=[str(c) for c in self.classes_],
            length_of=self.preprocessor_.length_of,
            class_weights=loss_class_weights(self.class_weights, labels[fit_idx], len(self.classes_)),
            train_transform=getattr(self.preprocessor_, "train_transform", None),
            train_variants=getattr(self.preprocessor_, "train_variants", None),
            max_tokens=getattr(self.preprocessor_, "max_length", None),
            mixup_alpha=MIXUP_ALPHA if "mixup" in augment else None,
            groups=np.concatenate([groups, copies_of[val_idx]]),
        )
        training = TrainingConfig(
            epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, min_steps=self.min_steps, seed=self.seed,
            precision=precision_for(self.precision, family),
            metric=self.metric or default_metric(label_counts(labels[fit_idx], len(self.classes_))),
        )  # fmt: skip
        training.validate()
        self.training_precision_ = precision_in_use(training.precision)  # what the training steps computed in
        self.model_ = strategy.export(strategy.fit(model, data, training))
        drop_output_capturing_hooks(self.model_)  # a fitted estimator pickles (joblib, GridSearchCV's n_jobs)
        if self.calibration == "temperature" and len(val_idx):
            logits = validation_logits(self.model_, data, training.eval_batch_size)
            base_model(self.model_).config.calibration_temperature = fit_temperature(logits, labels[val_idx])
        return self

    def predict_proba(self, X: Sequence[Any]) -> np.ndarray:
        check_is_fitted(self, "model_")
        features = self.preprocessor_.encode(self._inputs(X))
        return predict_proba(self.model_, features, self.preprocessor_.collate, self.preprocessor_.length_of)

    def predict(self, X: Sequence[Any]) -> np.ndarray:
        best = self.predict_proba(X).argmax(1)  # checks that the estimator is fitted first
        return self.classes_[best]
