"""Backbone families behind one contract (base.py): text encoders and ImageNet CNNs."""

from __future__ import annotations

from collections.abc import Sequence

from transferlab.backbones.base import LayerGroup, Preprocessor, TransferModel
from transferlab.backbones.text import TextClassifier, TextPreprocessor, build_text_classifier
from transferlab.backbones.vision import ImagePreprocessor, VisionClassifier, build_vision_classifier, vision_config_for
from transferlab.catalog import ResolvedAsset
from transferlab.errors import UserError


def load_preprocessor(
    asset: ResolvedAsset, max_length: int = 128, image_size: int = 224, normalization: str = "auto", augment: Sequence[str] = ()
) -> Preprocessor:
    """The tokenizer of a text backbone; for a CNN, the resize, crop and normalisation of its weights."""
    if asset.modality == "image":
        return ImagePreprocessor.for_model(vision_config_for(asset), image_size, normalization, augment)
    try:
        return TextPreprocessor.from_pretrained(asset.path, max_length)
    except (OSError, ValueError) as err:
        raise UserError(f"backbone '{asset.name}': cannot load its tokenizer: {str(err).splitlines()[0]}") from None


def build_classifier(asset: ResolvedAsset, label_names: list[str], pooling: str = "auto") -> TransferModel:
    """The pretrained backbone with a new head for these labels."""
    if asset.modality == "image":
        return build_vision_classifier(asset, label_names)
    try:
        return build_text_classifier(asset.path, len(label_names), label_names, pooling)
    except (OSError, ValueError) as err:
        raise UserError(f"backbone '{asset.name}': cannot load: {str(err).splitlines()[0]}") from None


__all__ = [
    "ImagePreprocessor",
    "LayerGroup",
    "Preprocessor",
    "TransferModel",
    "TextClassifier",
    "TextPreprocessor",
    "VisionClassifier",
    "build_classifier",
    "load_preprocessor",
]
