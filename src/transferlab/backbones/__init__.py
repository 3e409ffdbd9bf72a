"""Backbone families behind one contract (base.py), registered by name (registry.py).

A new family is one module with a `@register_family` class, imported here once so that it registers.
"""

from __future__ import annotations

from collections.abc import Sequence

from transferlab.backbones import cnn, decoder, text  # noqa: F401  (each module registers its family)
from transferlab.backbones.base import LayerGroup, Preprocessor, TransferModel
from transferlab.backbones.cnn import ImagePreprocessor
from transferlab.backbones.registry import BackboneFamily, family_for, family_named, family_of, resolve_backbone
from transferlab.backbones.text import TextClassifier, TextPreprocessor
from transferlab.backbones.vision import VisionClassifier
from transferlab.catalog import ResolvedAsset


def load_preprocessor(
    asset: ResolvedAsset, max_length: int = 128, image_size: int = 224, normalization: str = "auto", augment: Sequence[str] = ()
) -> Preprocessor:
    """The tokenizer of a text backbone; for a CNN, the resize, crop and normalisation of its weights."""
    return family_of(asset).preprocessor(asset, max_length, image_size, normalization, augment)


def build_classifier(asset: ResolvedAsset, label_names: list[str], pooling: str = "auto") -> TransferModel:
    """The pretrained backbone with a new head for these labels."""
    return family_of(asset).build(asset, label_names, pooling)


__all__ = [
    "BackboneFamily",
    "ImagePreprocessor",
    "LayerGroup",
    "Preprocessor",
    "TransferModel",
    "TextClassifier",
    "TextPreprocessor",
    "VisionClassifier",
    "build_classifier",
    "family_for",
    "family_named",
    "family_of",
    "load_preprocessor",
    "resolve_backbone",
]
