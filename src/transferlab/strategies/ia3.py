"""IA3 (Liu et al. 2022) through peft: learned vectors rescale keys, values and the feed-forward input."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import IA3Config as PeftIA3Config
from peft import PeftModel, get_peft_model
from torch import nn

from transferlab.backbones.base import TransferModel
from transferlab.errors import UserError
from transferlab.strategies.base import Strategy, TrainedStrategyConfig, matches_target, register_strategy


@dataclass
class IA3Config(TrainedStrategyConfig):
    lr: float = 3e-3
    target_modules: list[str] | None = field(default=None)  # None: the family's keys, values and feed-forward output
    feedforward_modules: list[str] | None = field(default=None)


@register_strategy
class IA3(Strategy):
    name = "ia3"
    summary = "learned rescaling vectors on keys, values and the feed-forward layer (peft IA3)"
    config_class = IA3Config
    uses_peft = True
    requires = frozenset({"transformer_blocks"})  # rescales attention and feed-forward activations

    def _targets(self, model: TransferModel) -> tuple[list[str], list[str]]:
        if self.config.target_modules:
            return self.config.target_modules, self.config.feedforward_modules or []
        return model.default_ia3_targets()

    def prepare(self, model: TransferModel) -> nn.Module:
        targets, feedforward = self._targets(model)
        config = PeftIA3Config(target_modules=targets, feedforward_modules=feedforward, modules_to_save=list(model.head_modules))
        try:
            return get_peft_model(model, config)
        except ValueError as err:
            raise UserError(f"IA3 cannot be applied: {err}") from None

    def expected_trainable_params(self, model: TransferModel) -> int:
        """One vector per adapted layer: its output size, or its input size for feed-forward layers."""
        targets, feedforward = self._targets(model)
        total = 0
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and matches_target(name, targets):
                total += module.in_features if matches_target(name, feedforward) else module.out_features
        return total + model.head_size()

    def export(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload() if isinstance(model, PeftModel) else model
