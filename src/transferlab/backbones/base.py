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
from typing import Any

import torch
from torch import nn


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
    modality: str = "text"  # text | image: which data and which strategies fit

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
