"""The contract every backbone family meets, so strategies and studies never need per-model code.

Like timm's `forward_features` / `forward_head` / `group_matcher`: a classifier built by any family
exposes its layers as ordered groups (embeddings or stem first, head last), its pooled features,
the pooled hidden state of every layer, and the names of the modules that form the new head.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from transferlab.errors import UserError

# What a model offers beyond the contract's core, named in `TransferModel.capabilities` and required
# by strategies (`Strategy.requires`) instead of family names:
CAPABILITIES = {
    "tokens": "reads token sequences (virtual tokens, sentence pairs)",
    "transformer_blocks": "is a stack of equal-width blocks (`layer_stack`, `add_adapters`)",
    "layer_features": "pools every layer at the head's width (`set_feature_layers` beyond last)",
    "prefix_cut": "its bottom layer groups can be cut off and their output looked up (`prefix_units`)",
}


@dataclass(frozen=True)
class LayerGroup:
    """Parameters whose names start with one of `prefixes`, trained, frozen or scheduled together."""

    name: str
    prefixes: tuple[str, ...]

    def owns(self, parameter_name: str) -> bool:
        """Prefix match on the name without peft's wrapper (`base_model.model.<name>`, `base_model.<name>`).

        Anchored at the start: a CNN may keep a module named `classifier` inside its backbone
        (torchvision's ConvNeXt keeps its last LayerNorm there), which the new head must not own.
        """
        name = parameter_name.removeprefix("base_model.model.").removeprefix("base_model.")
        return name.startswith(self.prefixes)


class TransferModel(ABC):
    """Mixed into each family's classifier (an nn.Module): the uniform model contract."""

    head_modules: tuple[str, ...] = ("classifier",)
    capabilities: ClassVar[frozenset[str]] = frozenset()  # names from CAPABILITIES
    feature_layer_choices: ClassVar[tuple[str, ...]] = ("last",)  # what `set_feature_layers` accepts
    gap_signal: ClassVar[str] = "features"  # how the domain gap is measured: tokenizer statistics, or features
    has_lm_head: bool = False  # keeps its language-model head: the perplexity meter applies
    input_name: ClassVar[str] = "input_ids"  # the forward argument holding the examples (a frozen-layer cache keys on it)

    @abstractmethod
    def feature_dim(self) -> int:
        """Size of the pooled features the head sees."""

    @abstractmethod
    def layer_groups(self) -> list[LayerGroup]:
        """Ordered from the input side (embeddings / stem) to the new head; every parameter in exactly one."""

    @abstractmethod
    def forward_features(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Pooled features, shape (batch, feature_dim): what the head sees."""

    @abstractmethod
    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from pooled features."""

    @abstractmethod
    def pooled_hidden_states(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        """The pooled output of the embeddings and of every layer, in one forward pass."""

    @abstractmethod
    def default_lora_targets(self) -> list[str]:
        """Module names LoRA adapts when the user names none."""

    @abstractmethod
    def default_ia3_targets(self) -> tuple[list[str], list[str]]:
        """(modules IA3 rescales, the subset rescaled on their input side) when the user names none."""

    def set_feature_layers(self, choice: str) -> None:
        """Feed the head from other layers (one of `feature_layer_choices`); rebuilds the head, so call before training."""
        if choice not in self.feature_layer_choices:
            raise UserError(f"this backbone feeds the head from {' or '.join(self.feature_layer_choices)}, not '{choice}'")

    def set_unit_length(self, on: bool) -> None:
        """Scale every pooled state to unit L2 length before the head (sentence-transformers' Normalize module), or
        stop: a body tuned on cosine similarities encodes its examples in the directions, and the lengths are noise
        to a head that reads them (capability `tokens`, which the contrastive strategy needs)."""
        raise NotImplementedError(f"{type(self).__name__} cannot scale its pooled features")

    def layer_stack(self) -> nn.ModuleList:
        """The blocks, bottom first (capability `transformer_blocks`)."""
        raise NotImplementedError(f"{type(self).__name__} has no stack of equal-width blocks")

    def prefix_units(self, groups: int) -> list[nn.Module]:
        """The modules computing the bottom `groups` layer groups, in forward order, each reading the output of the one
        before; the rest of the network reads only the last one's output. Empty where the groups cannot be cut there
        (capability `prefix_cut`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be cut below its layer groups")

    def add_adapters(self, kind: str, r: int) -> None:
        """Bottleneck adapters in every block (capability `transformer_blocks`)."""
        raise NotImplementedError(f"{type(self).__name__} has no blocks to insert adapters into")

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for name in self.head_modules for p in getattr(self, name).parameters()]

    def head_size(self) -> int:
        """Parameters in the new head: part of every strategy's trainable count."""
        return sum(p.numel() for p in self.head_parameters())

    def group_of(self, parameter_name: str) -> str:
        """The layer group that owns a parameter, ignoring wrapper prefixes added by peft."""
        for group in self.layer_groups():
            if group.owns(parameter_name):
                return group.name
        raise KeyError(parameter_name)


MULTI_LABEL = "multi_label_classification"  # transformers' problem type for independent labels


def is_multi_label_model(model: nn.Module) -> bool:
    """A classifier trained on multi-label data: a sigmoid per label turns its logits into probabilities."""
    return getattr(base_model(model).config, "problem_type", None) == MULTI_LABEL


def output_probabilities(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes, or a sigmoid per label for a multi-label classifier."""
    return torch.sigmoid(logits.float()) if is_multi_label_model(model) else torch.softmax(logits.float(), -1)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the classes; for multi-label targets (a float 0/1 matrix, as `label_value` makes them)
    binary cross-entropy per label, averaged, as transformers' `multi_label_classification` problem type does."""
    if labels.is_floating_point() and labels.dim() == 2:
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return nn.functional.cross_entropy(logits, labels)


def label_value(label: Any) -> int | list[float]:
    """A target as an encoded example carries it: a class id, or for multi-label data one 0/1 float per label."""
    return [float(v) for v in label] if np.ndim(label) else int(label)


class Preprocessor(ABC):
    """Turns raw inputs into model inputs; saved beside an exported model."""

    @abstractmethod
    def encode(self, inputs: Sequence[Any], labels: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """One feature dict per example, ready for `collate`."""

    @abstractmethod
    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """A padded batch."""

    @abstractmethod
    def save(self, directory: Path) -> None: ...

    @staticmethod
    def length_of(feature: dict[str, Any]) -> int:
        """Used to sort examples so that batches hold inputs of similar size."""
        return 1


def base_model(model: nn.Module) -> Any:
    """The TransferModel inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
