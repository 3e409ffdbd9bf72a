"""BitFit (Ben Zaken et al. 2022): only the bias terms of the backbone train, with the new head."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transferlab.backbones.base import TransferModel
from transferlab.strategies.base import Strategy, TrainedStrategyConfig, register_strategy, set_trainable


@dataclass
class BitFitConfig(TrainedStrategyConfig):
    lr: float = 1e-3  # biases are few and start far from what the task needs


def _is_bias_or_head(model: TransferModel, name: str) -> bool:
    return name.endswith(".bias") or model.group_of(name) == "head"


@register_strategy
class BitFit(Strategy):
    name = "bitfit"
    summary = "bias terms only (and the head); a cheap baseline from the literature"
    config_class = BitFitConfig

    def unsupported_reason(self, model: TransferModel) -> str | None:
        """A backbone without biases (Llama-style decoders: bias-free projections, RMSNorm) would train the head alone,
        a weaker `head` under BitFit's name."""
        if not any(name.endswith(".bias") and model.group_of(name) != "head" for name, _ in model.named_parameters()):
            return f"{self.name} trains the backbone's bias terms, and {type(model).__name__} has none"
        return super().unsupported_reason(model)

    def prepare(self, model: TransferModel) -> nn.Module:
        set_trainable(model, lambda name: _is_bias_or_head(model, name))
        return model

    def expected_trainable_params(self, model: TransferModel) -> int:
        """The sum of every bias vector's size, plus the head."""
        biases = sum(m.bias.numel() for m in model.modules() if getattr(m, "bias", None) is not None and isinstance(m.bias, nn.Parameter))
        head_weights = sum(p.numel() for n, p in model.named_parameters() if model.group_of(n) == "head" and not n.endswith(".bias"))
        return biases + head_weights
