"""LP-FT (Kumar et al. 2022): fit the head on frozen features first, then fine-tune everything from there.

Starting full fine-tuning from a trained head instead of a random one keeps early gradients from
distorting the pretrained features, which holds up better out of distribution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from transferlab.backbones.base import TransferModel
from transferlab.settings import TrainingConfig
from transferlab.strategies.base import Strategy, TrainedStrategyConfig, register_strategy, set_trainable
from transferlab.strategies.head import FeatureExtraction
from transferlab.training.loop import FitData, train_with_trainer


@dataclass
class LPFTConfig(TrainedStrategyConfig):
    lr: float = 2e-5  # the head is already good: the fine-tuning stage only needs small steps


@register_strategy
class LinearProbeThenFineTune(Strategy):
    name = "lp-ft"
    summary = "linear probe on frozen features first, then full fine-tuning from that head (Kumar 2022)"
    config_class = LPFTConfig

    def expected_trainable_params(self, model: TransferModel) -> int:
        return sum(p.numel() for p in model.parameters())

    def reads_frozen_features(self) -> bool:
        return True

    def fit(self, model: TransferModel, data: FitData, training: TrainingConfig) -> nn.Module:
        """The probe reads the training rows alone (the head strategy also fits on the validation rows): fine-tuning
        keeps the probe's head, and early stopping, the temperature and `auto` judge it on those rows."""
        n = len(data.train)
        frozen = None if data.frozen_features is None else {layer: rows[:n] for layer, rows in data.frozen_features.items()}
        groups = None if data.groups is None else data.groups[:n]
        probe_data = dataclasses.replace(data, val=[], frozen_features=frozen, groups=groups)
        probed = FeatureExtraction(layers="last").fit(model, probe_data, training)  # Kumar et al. probe the last layer
        set_trainable(probed, lambda name: True)
        return train_with_trainer(probed, data, training, lr=self.learning_rate(training), lr_scale=self.lr_scale(model, data, training))
