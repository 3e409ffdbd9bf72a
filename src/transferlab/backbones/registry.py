"""Backbone families, registered by name like timm's `@register_model`.

A family is one module: it says which backbones it reads (a catalog entry names its family; any other
spec is offered to each family's `claims`), how it resolves and hashes them, builds a classifier and its
preprocessor, loads an exported model, and what defaults a run gets with it (augmentations, strategy
settings, pooling). Nothing outside a family's module branches on which family a backbone belongs to:
code asks the family or the model (`TransferModel.capabilities`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from transferlab.backbones.base import Preprocessor, TransferModel
from transferlab.catalog import BACKBONES, ResolvedAsset
from transferlab.errors import UserError


class BackboneFamily(ABC):
    """How one kind of backbone is recognised, built, preprocessed and loaded again."""

    name: ClassVar[str]
    inputs: ClassVar[str]  # what its examples are: text or image (how data files are read)
    fallback: ClassVar[bool] = False  # tried after every other family has declined a spec
    default_pooling: ClassVar[str] = "mean"  # what pooling "auto" means for it
    has_lm_head: ClassVar[bool] = False  # keeps its pre-training language-model head (the perplexity meter applies)
    library_name: ClassVar[str]  # the library that loads its merged exports (a model card's library_name)
    augmentations: ClassVar[tuple[str, ...]] = ()  # the names `--augment` accepts
    augments_copies: ClassVar[bool] = False  # augmentation adds training copies (data/augment.py), not per-batch transforms
    default_augment: ClassVar[tuple[str, ...]] = ()
    # Strategy settings this family needs instead of the strategies' own defaults (e.g. larger rates for CNNs).
    strategy_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # Why `precision: auto` trains this family in fp32 on a CPU that computes bf16 natively (measured slower or
    # less accurate there), or None: auto takes bf16 on such a CPU.
    cpu_bf16_declined: ClassVar[str | None] = None

    def claims(self, spec: str) -> bool:
        """Whether a backbone spec that is not a catalog name is this family's, decided without loading weights."""
        return False

    def claims_config(self, config: Any) -> bool:
        """Whether a loaded transformers config is this family's (a hub id's family is known only once loaded)."""
        return False

    @abstractmethod
    def resolve(self, spec: str) -> ResolvedAsset:
        """Where the spec's files are, and their hashes for the run record."""

    @abstractmethod
    def build(self, asset: ResolvedAsset, label_names: list[str], pooling: str = "auto") -> TransferModel:
        """The pretrained backbone with a new head for these labels."""

    @abstractmethod
    def preprocessor(
        self, asset: ResolvedAsset, max_length: int = 128, image_size: int = 224, normalization: str = "auto", augment: Sequence[str] = ()
    ) -> Preprocessor:
        """What turns this family's raw inputs into model inputs."""

    @abstractmethod
    def load_merged(self, model_dir: Path) -> nn.Module:
        """A merged model written by `export` (an adapter is loaded onto `build` instead)."""

    @abstractmethod
    def load_preprocessor(self, model_dir: Path, manifest: dict[str, Any]) -> Preprocessor:
        """The preprocessor saved beside an exported model or adapter."""


FAMILIES: dict[str, BackboneFamily] = {}


def register_family(cls: type[BackboneFamily]) -> type[BackboneFamily]:
    """Class decorator: one instance of the family, found by its name and offered every spec."""
    if cls.name in FAMILIES:
        raise ValueError(f"backbone family '{cls.name}' is registered twice")
    FAMILIES[cls.name] = cls()
    return cls


def family_named(name: str) -> BackboneFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(f"unknown backbone family '{name}': known are {', '.join(FAMILIES)}") from None


def _in_claim_order() -> list[BackboneFamily]:
    return sorted(FAMILIES.values(), key=lambda family: family.fallback)


def family_for(spec: str) -> BackboneFamily:
    """The family that reads a backbone spec: a catalog entry's own, else the first that claims it."""
    if spec in BACKBONES:
        return family_named(BACKBONES[spec].family)
    for family in _in_claim_order():
        if family.claims(spec):
            return family
    raise UserError(f"unknown backbone '{spec}': choose one of {', '.join(BACKBONES)}, a model folder or a hub id (org/name)")


def family_of_config(config: Any) -> BackboneFamily:
    """The family of a loaded transformers config; the fallback family when none claims it."""
    for family in _in_claim_order():
        if family.claims_config(config) or family.fallback:
            return family
    raise LookupError("no fallback backbone family is registered")


def resolve_backbone(spec: str) -> ResolvedAsset:
    """A catalog name, a local model folder, a library spec (`timm:NAME=FILE`) or a hub id the user names."""
    if spec in BACKBONES:
        return BACKBONES[spec].resolve(spec)
    return family_for(spec).resolve(spec)


def family_of(asset: ResolvedAsset) -> BackboneFamily:
    return family_named(asset.family)
