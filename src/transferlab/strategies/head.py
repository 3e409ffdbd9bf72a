"""Feature extraction: a frozen backbone runs once per example; a linear head fits its features.

The head is scikit-learn's L2-regularised logistic regression trained to convergence on the
cached, standardised features. Its strength is chosen by stratified 5-fold cross-validation over
the training and validation examples together (a 200-example validation set alone picks it
noisily; the features are cached, so the extra fits cost seconds), the copies of an example
(`FitData.groups`) within one fold, then refitted on all of them.
Its weights, with the standardisation folded in, are written into the model's linear head, so the
exported model is an ordinary classifier giving exactly the probabilities the regression gave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from transferlab.backbones.base import TransferModel
from transferlab.backbones.text import FEATURE_LAYERS
from transferlab.errors import UserError
from transferlab.evaluation.probe import ProbeSettings, fit_probe, informative_features, out_of_fold_logits
from transferlab.settings import TrainingConfig
from transferlab.strategies.base import Strategy, StrategyConfig, register_strategy, set_trainable
from transferlab.training.inference import map_batches, pooled_features, training_precision
from transferlab.training.loop import FitData

HEAD_LAYERS = (*FEATURE_LAYERS, "auto")
# What "auto" chooses between, by the probe's cross-validated score on the same folds: the layer-probe study
# found the layer below the last 4 points better on rt-polarity with minilm-l6. The last layer stays unless the
# other beats it on the folds by more than noise (paired t-test): on 16 sentences the folds' scores are noise and
# choosing by their mean alone lost 2 points (docs/findings.md). The learned mix is not a candidate: its weights
# are fitted on the very examples the cross-validation scores, so its score is optimistic.
AUTO_LAYERS = ("last", "second_to_last")


def unpoolable_layers(layers: str) -> str:
    """Why a head reading `layers` cannot be a sentence-transformers pipeline: its pooling reads one layer's states
    (the last, or the one below it with a layer cut off the body), not several."""
    return f"the head reads '{layers}' layer features, which sentence-transformers' pooling cannot"


@dataclass
class HeadConfig(StrategyConfig):
    layers: str = "auto"  # auto (last or second_to_last: the higher cross-validated score) | last | second_to_last | last4 | weighted
    c_grid: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0])
    cv_folds: int = 5
    max_iter: int = 3000
    standardize: bool = True  # each feature scaled to unit variance before the regression
    balanced: bool = False  # scikit-learn's balanced class weights in the regression; --class-weights balanced sets them too

    def validate(self) -> None:
        if self.layers not in HEAD_LAYERS:
            raise UserError(f"layers must be one of {', '.join(HEAD_LAYERS)}, got '{self.layers}'")
        if not self.c_grid or min(self.c_grid) <= 0:
            raise UserError(f"c_grid must hold positive values, got {self.c_grid}")
        if self.cv_folds < 2:
            raise UserError(f"cv_folds must be at least 2, got {self.cv_folds}")


@register_strategy
class FeatureExtraction(Strategy):
    name = "head"
    summary = "frozen backbone, features cached once, linear head fitted to convergence"
    config_class = HeadConfig
    trains_backbone = False

    def prepare(self, model: TransferModel, layers: str | None = None) -> nn.Module:
        """Only the head trains; it reads `layers` (default: the configured choice, the last layer for auto)."""
        choice = layers or self.config.layers
        model.set_feature_layers("last" if choice == "auto" else choice)
        head = {id(p) for p in model.head_parameters()}
        set_trainable(model, lambda name: id(model.get_parameter(name)) in head)
        return model

    def candidate_layers(self, model: TransferModel) -> tuple[str, ...]:
        if self.config.layers != "auto":
            return (self.config.layers,)
        return tuple(layer for layer in AUTO_LAYERS if layer in model.feature_layer_choices)

    def reads_frozen_features(self) -> bool:
        return self.config.layers in AUTO_LAYERS or self.config.layers == "auto"

    def sentence_transformers_refusal(self) -> str | None:
        return None if self.config.layers in (*AUTO_LAYERS, "auto") else unpoolable_layers(self.config.layers)

    def expected_trainable_params(self, model: TransferModel) -> int:
        """A linear head, (features + 1) x classes, plus one mixing weight per layer state when weighted."""
        features = model.feature_dim() * (4 if self.config.layers == "last4" else 1)
        weighted = self.config.layers == "weighted"
        states = model.config.backbone_config.num_hidden_layers + 1 if weighted else 0
        return (features + 1) * model.config.num_labels + states

    def fit(self, model: TransferModel, data: FitData, training: TrainingConfig) -> nn.Module:
        model = self.prepare(model)
        examples = data.train + data.val
        y = np.array([f["labels"] for f in examples]).astype(np.int64)  # class ids, or a 0/1 row per example (multi-label)
        if self.config.layers == "weighted":
            states = self._layer_states(model, examples, data, training)
            mix = self._fit_layer_mix(model, states, y, len(data.train), data, training)
            x = np.einsum("l,nld->nd", mix, states)
            coef, intercept = self._fit_linear(x, y, len(data.label_names), data, training)
        else:
            coef, intercept = self._fit_best_layer(model, examples, y, data, training)
        with torch.no_grad():
            model.classifier.weight.copy_(torch.as_tensor(coef, dtype=model.classifier.weight.dtype))
            model.classifier.bias.copy_(torch.as_tensor(intercept, dtype=model.classifier.bias.dtype))
        return model

    def _fit_best_layer(
        self, model: TransferModel, examples: list[dict], y: np.ndarray, data: FitData, training: TrainingConfig
    ) -> tuple[np.ndarray, np.ndarray]:
        """The probe on each candidate layer's features; the layer with the higher cross-validated score wins (the last
        layer on a tie). No significance test guards the switch: on four text sets from 16 to 2,000 examples, it
        kept the last layer where the layer below scored more on test, and cost 1.6 points on average
        (bench/head_layer.py, docs/findings.md). The head is rebuilt to read the choice, which goes to the log."""
        offered = self.candidate_layers(model)
        features = self._layer_features(model, examples, offered, data, training)
        # a layer whose every feature is constant (a degenerate backbone) tells nothing: it is not a candidate
        candidates = tuple(layer for layer in offered if informative_features(features[layer]).any()) or offered[:1]
        settings = self.probe_settings(training, balanced=data.class_weights is not None)
        probes = {layer: fit_probe(features[layer], y, len(data.label_names), settings, data.groups) for layer in candidates}
        chosen = max(candidates, key=lambda layer: probes[layer].best_score)  # the first, the last layer, on a tie
        self.prepare(model, chosen)
        self._leave_validation_logits(features[chosen], y, data, settings, probes[chosen].chosen_c)
        data.log_history.extend(probes[chosen].log_entries(training.headline_metric))
        if self.config.layers == "auto":
            scores = {layer: round(probes[layer].best_score, 4) if layer in probes else None for layer in offered}
            data.log_history.append({"head_layer": chosen, f"cv_{training.headline_metric}_by_layer": scores})
        return probes[chosen].coef, probes[chosen].intercept

    def _layer_features(
        self, model: TransferModel, examples: list[dict], layers: tuple[str, ...], data: FitData, training: TrainingConfig
    ) -> dict[str, np.ndarray]:
        """Each layer's pooled features of `examples`: the data checks' when they cover them, else one forward pass."""
        if data.frozen_features is not None and all(layer in data.frozen_features for layer in layers):
            return data.frozen_features
        if len(layers) == 1:  # the model was prepared to read it
            with training_precision(training):
                return {layers[0]: pooled_features(model, examples, data.collate, data.length_of, training.eval_batch_size)}
        states = self._layer_states(model, examples, data, training)
        below = {"last": -1, "second_to_last": -2}
        return {layer: np.ascontiguousarray(states[:, below[layer]]) for layer in layers}

    @staticmethod
    def _layer_states(model: TransferModel, examples: list[dict], data: FitData, training: TrainingConfig) -> np.ndarray:
        """Examples x (embeddings + layers) x features: every layer's pooled state, from one forward pass."""
        with training_precision(training):
            compute = lambda m, b: torch.stack(m.pooled_hidden_states(**b), 1)  # noqa: E731
            return map_batches(model, examples, data.collate, compute, data.length_of, training.eval_batch_size)

    def _fit_linear(
        self, x: np.ndarray, y: np.ndarray, num_classes: int, data: FitData, training: TrainingConfig
    ) -> tuple[np.ndarray, np.ndarray]:
        """The cross-validated probe (evaluation/probe.py); its C search goes to the run's log history."""
        settings = self.probe_settings(training, balanced=data.class_weights is not None)
        probe = fit_probe(x, y, num_classes, settings, data.groups)
        self._leave_validation_logits(x, y, data, settings, probe.chosen_c)
        data.log_history.extend(probe.log_entries(training.headline_metric))
        return probe.coef, probe.intercept

    @staticmethod
    def _leave_validation_logits(x: np.ndarray, y: np.ndarray, data: FitData, settings: ProbeSettings, c: float) -> None:
        """The head is fitted on the validation rows too, so its logits there are in-sample: the run chooses its
        temperature and threshold from out-of-fold logits instead (rows after the training ones are validation)."""
        if data.val:
            data.validation_logits = out_of_fold_logits(x, y, len(data.label_names), settings, c, data.groups)[len(data.train) :]

    def probe_settings(self, training: TrainingConfig, balanced: bool = False) -> ProbeSettings:
        return ProbeSettings(
            c_grid=tuple(self.config.c_grid),
            folds=self.config.cv_folds,
            max_iter=self.config.max_iter,
            seed=training.seed,
            metric=training.headline_metric,
            balanced=balanced or self.config.balanced,
            standardize=self.config.standardize,
        )

    def _fit_layer_mix(
        self, model: TransferModel, states: np.ndarray, y: np.ndarray, n_train: int, data: FitData, training: TrainingConfig
    ) -> np.ndarray:
        """Learn the softmax weights over layer states (ELMo's scalar mix) on the cached states.

        Written by hand (no library fits a scalar mix on cached features): a linear head is fitted on
        the current mix of the training examples, then the mix weights alone take gradient steps on them with
        that head fixed, keeping the weights with the lowest validation loss (the training loss when there are no
        validation examples); two rounds. Neither the head nor the steps read the validation examples, so their loss
        judges the mix fairly.
        """
        num_classes = len(data.label_names)
        s = torch.as_tensor(states, dtype=torch.float32)
        target = torch.as_tensor(y, dtype=torch.float32 if y.ndim == 2 else torch.int64)
        settings = self.probe_settings(training, balanced=data.class_weights is not None)
        judged = slice(n_train, None) if len(y) > n_train else slice(None)
        train_groups = None if data.groups is None else data.groups[:n_train]

        def example_losses(logits: torch.Tensor) -> torch.Tensor:
            if y.ndim == 2:  # multi-label: binary cross-entropy per label, averaged per example
                return nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
            return nn.functional.cross_entropy(logits, target, reduction="none")

        logits_of = torch.zeros(states.shape[1], requires_grad=True)
        for _ in range(2):
            mix = torch.softmax(logits_of.detach(), 0).numpy()
            probe = fit_probe(np.einsum("l,nld->nd", mix, states[:n_train]), y[:n_train], num_classes, settings, train_groups)
            w, b = torch.as_tensor(probe.coef, dtype=torch.float32), torch.as_tensor(probe.intercept, dtype=torch.float32)
            optimizer = torch.optim.Adam([logits_of], lr=0.05)
            best = (float("inf"), logits_of.detach().clone())
            for _ in range(100):
                mixed = torch.einsum("l,nld->nd", torch.softmax(logits_of, 0), s)
                losses = example_losses(mixed @ w.T + b)
                val_loss = float(losses[judged].detach().mean())
                if val_loss < best[0]:
                    best = (val_loss, logits_of.detach().clone())
                optimizer.zero_grad()
                losses[:n_train].mean().backward()
                optimizer.step()
            with torch.no_grad():
                logits_of.copy_(best[1])
        weights = torch.softmax(logits_of.detach(), 0)
        with torch.no_grad():
            model.layer_mix.weights.copy_(logits_of.detach())
        data.log_history.append({"layer_weights": [round(float(v), 4) for v in weights]})
        return weights.numpy()


@dataclass
class WeightedLayersConfig(HeadConfig):
    layers: str = "weighted"


@register_strategy
class WeightedLayerFeatures(FeatureExtraction):
    name = "head-all-layers"
    summary = "feature extraction from a learned weighted sum of every layer's pooled state (ELMo scalar mix)"
    config_class = WeightedLayersConfig
    starts_at_pretrained = False  # the head is rebuilt for the mixed features
    requires = frozenset({"layer_features"})  # one common width to mix the layers in
