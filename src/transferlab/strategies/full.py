"""Full fine-tuning: every parameter trains, with AdamW, a small learning rate and weight decay."""

from __future__ import annotations

from dataclasses import dataclass

from transferlab.backbones.base import TransferModel
from transferlab.strategies.base import Strategy, TrainedStrategyConfig, register_strategy


@dataclass
class FullConfig(TrainedStrategyConfig):
    # Above the usual 2e-5: the randomly initialised head shares this rate, and with a few
    # thousand examples and a small encoder 2e-5 leaves it undertrained within 3 epochs.
    lr: float = 5e-5


@register_strategy
class FullFineTuning(Strategy):
    name = "full"
    summary = "all parameters train (AdamW, small LR, weight decay 0.01)"
    config_class = FullConfig

    def expected_trainable_params(self, model: TransferModel) -> int:
        return sum(p.numel() for p in model.parameters())


@dataclass
class DiscriminativeConfig(FullConfig):
    layer_decay: float | None = 0.95


@register_strategy
class DiscriminativeFineTuning(FullFineTuning):
    name = "discriminative"
    summary = "full fine-tuning with discriminative learning rates lr * eta^(L - l), eta 0.95 (ULMFiT)"
    config_class = DiscriminativeConfig
