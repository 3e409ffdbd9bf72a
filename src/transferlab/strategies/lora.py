"""LoRA (Hu et al. 2021) through peft: W' = W + (alpha / r) B A on the attention projections; merged on export."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

from transferlab.backbones.base import TransferModel
from transferlab.errors import UserError
from transferlab.strategies.base import Strategy, TrainedStrategyConfig, matches_target, register_strategy


@dataclass
class LoraConfig(TrainedStrategyConfig):
    # Measured on minilm-l6 + rt-polarity (3 epochs): 5e-4 -> 0.766, 1e-3 -> 0.802, 2e-3 -> 0.798 at 2,000
    # examples; at 400, 1e-3 -> 0.697. LoRA needs far larger rates than full fine-tuning.
    lr: float = 1e-3
    r: int = 8
    alpha: float = 16
    dropout: float = 0.1
    target_modules: list[str] | None = field(default=None)  # None: the backbone family's q/v projections

    def validate(self) -> None:
        super().validate()
        if self.r < 1:
            raise UserError(f"LoRA rank r must be at least 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


@register_strategy
class Lora(Strategy):
    name = "lora"
    summary = "low-rank updates B A on the attention projections; backbone frozen; merged on export"
    config_class = LoraConfig
    uses_peft = True

    def prepare(self, model: TransferModel) -> nn.Module:
        cfg = self.config
        peft_config = PeftLoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules or model.default_lora_targets(),
            modules_to_save=list(model.head_modules),  # the new head trains in full
        )
        try:
            return get_peft_model(model, peft_config)
        except ValueError as err:
            raise UserError(f"LoRA cannot be applied: {err}") from None

    def expected_trainable_params(self, model: TransferModel) -> int:
        """r (d_in + d_out) for every adapted linear layer, plus the new head in full.

        A convolution's A is itself a convolution of the same kernel (r x d_in x k x k) and B a 1x1 one (d_out x r).
        """
        targets = self.config.target_modules or model.default_lora_targets()
        total = model.head_size()
        for name, m in model.named_modules():
            if matches_target(name, targets) and isinstance(m, nn.Linear):
                total += self.config.r * (m.in_features + m.out_features)
            elif matches_target(name, targets) and isinstance(m, nn.Conv2d):
                total += self.config.r * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
        return total

    def export(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload() if isinstance(model, PeftModel) else model
