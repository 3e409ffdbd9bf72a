"""Prompt tuning (Lester et al. 2021) and prefix tuning (Li & Liang 2021) through peft.

Prompt tuning learns k virtual token embeddings in front of the input (k d parameters); prefix
tuning learns k keys and values for every layer's attention (2 k L d parameters). Both keep the
backbone frozen and train the new head; neither can be merged, so they export as peft adapters.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
from torch import nn

from transferlab.backbones.base import TransferModel
from transferlab.errors import UserError
from transferlab.settings import TrainingConfig
from transferlab.strategies.base import Strategy, TrainedStrategyConfig, register_strategy
from transferlab.training.loop import FitData


@dataclass
class VirtualTokensConfig(TrainedStrategyConfig):
    lr: float = 1e-2  # soft prompts need far larger steps than weights (Lester et al. use 0.3 with Adafactor)
    num_virtual_tokens: int = 20

    def validate(self) -> None:
        super().validate()
        if self.num_virtual_tokens < 1:
            raise UserError(f"num_virtual_tokens must be at least 1, got {self.num_virtual_tokens}")


class VirtualTokens(Strategy):
    """Shared by prompt and prefix tuning: a peft prompt-learning config over the backbone's shape."""

    peft_config_class: ClassVar[type]
    config_class = VirtualTokensConfig
    uses_peft = True
    merges = False  # virtual tokens are inputs, not weights: nothing to merge them into
    starts_at_pretrained = False  # virtual tokens change the input from the start
    requires = frozenset({"tokens"})  # virtual tokens are token embeddings

    def prepare(self, model: TransferModel) -> nn.Module:
        cfg = model.config
        peft_config = self.peft_config_class(
            task_type=TaskType.SEQ_CLS,
            num_virtual_tokens=self.config.num_virtual_tokens,
            token_dim=cfg.hidden_size,
            num_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
        )
        return get_peft_model(model, peft_config)

    def fit(self, model: TransferModel, data: FitData, training: TrainingConfig) -> nn.Module:
        """Refused when the virtual tokens and the longest inputs together pass the backbone's positions (BERT's 512):
        the embeddings would fail on the first long text, in training or at prediction."""
        positions = usable_positions(model)
        k = self.config.num_virtual_tokens
        if data.max_tokens is not None and positions is not None and data.max_tokens + k > positions:
            raise UserError(
                f"{self.name} tuning puts {k} virtual tokens beside inputs of up to {data.max_tokens} tokens, more than the "
                f"backbone's {positions} positions: use --max-length {positions - k} or fewer"
            )
        return super().fit(model, data, training)


def usable_positions(model: TransferModel) -> int | None:
    """The positions an input can fill: `max_position_embeddings`, less those below the first one RoBERTa and MPNet
    number from (their padding index + 1; their position table is built with that padding_idx). None where the
    backbone does not say."""
    positions = getattr(model.config.backbone_config, "max_position_embeddings", None)
    table = next((m for name, m in model.named_modules() if name.endswith("position_embeddings") and isinstance(m, nn.Embedding)), None)
    skipped = table.padding_idx + 1 if table is not None and table.padding_idx is not None else 0
    return None if positions is None else positions - skipped


@register_strategy
class PromptTuning(VirtualTokens):
    name = "prompt"
    summary = "k learned virtual token embeddings before the input (peft prompt tuning)"
    peft_config_class = PromptTuningConfig

    def expected_trainable_params(self, model: TransferModel) -> int:
        """k d, plus the head."""
        return self.config.num_virtual_tokens * model.config.hidden_size + model.head_size()


@dataclass
class PrefixConfig(VirtualTokensConfig):
    lr: float = 5e-3


@register_strategy
class PrefixTuning(VirtualTokens):
    name = "prefix"
    summary = "k learned keys and values at every layer's attention (peft prefix tuning)"
    config_class = PrefixConfig
    peft_config_class = PrefixTuningConfig

    def unsupported_reason(self, model: TransferModel) -> str | None:
        backbone = model.backbone
        if super().unsupported_reason(model):
            return super().unsupported_reason(model)
        if "past_key_values" not in inspect.signature(backbone.forward).parameters:
            return f"prefix tuning needs attention that takes past keys and values; {type(backbone).__name__} has none"
        return None

    def expected_trainable_params(self, model: TransferModel) -> int:
        """2 k L d (a key and a value per virtual token and layer), plus the head; under grouped-query
        attention (Llama) keys and values have d / heads x key-value heads dimensions."""
        cfg = model.config
        kv_dim = cfg.hidden_size // cfg.num_attention_heads * (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        return 2 * self.config.num_virtual_tokens * cfg.num_hidden_layers * kv_dim + model.head_size()
