"""Bottleneck adapters: Houlsby (after attention and after the feed-forward block) and
Pfeiffer (after the feed-forward block only); the backbone stays frozen. See backbones/adapters.py."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transferlab.backbones.adapters import ADAPTER_KINDS
from transferlab.backbones.base import TransferModel
from transferlab.errors import UserError
from transferlab.strategies.base import Strategy, TrainedStrategyConfig, register_strategy, set_trainable

# sentence-transformers rebuilds the body from its transformers config, which has no place for them
ADAPTERS_IN_LAYERS = "bottleneck adapters live inside the backbone's layers, which sentence-transformers rebuilds without them"


@dataclass
class AdapterConfig(TrainedStrategyConfig):
    lr: float = 1e-3
    r: int = 64  # the bottleneck width

    def validate(self) -> None:
        super().validate()
        if self.r < 1:
            raise UserError(f"adapter bottleneck r must be at least 1, got {self.r}")


class BottleneckAdapters(Strategy):
    kind: str
    config_class = AdapterConfig
    requires = frozenset({"transformer_blocks"})  # inserted into Transformer layers

    def prepare(self, model: TransferModel) -> nn.Module:
        model.add_adapters(self.kind, self.config.r)
        set_trainable(model, lambda name: ".adapter." in name or model.group_of(name) == "head")
        return model

    def sentence_transformers_refusal(self) -> str | None:
        return ADAPTERS_IN_LAYERS

    def expected_trainable_params(self, model: TransferModel) -> int:
        """2 d r + r + d per adapter, one per adapted block and layer, plus the head."""
        d, r = model.config.backbone_config.hidden_size, self.config.r
        adapters = model.config.backbone_config.num_hidden_layers * len(ADAPTER_KINDS[self.kind])
        return adapters * (2 * d * r + r + d) + model.head_size()


@register_strategy
class HoulsbyAdapters(BottleneckAdapters):
    name = "houlsby"
    summary = "bottleneck adapters after attention and after the feed-forward block (Houlsby 2019)"
    kind = "houlsby"


@register_strategy
class PfeifferAdapters(BottleneckAdapters):
    name = "pfeiffer"
    summary = "bottleneck adapters after the feed-forward block only (Pfeiffer 2021)"
    kind = "pfeiffer"
