"""Backbone families behind one contract (base.py). Text encoders today; CNNs plug in beside them."""

from __future__ import annotations

from transferlab.backbones.base import LayerGroup, Preprocessor, TransferModel
from transferlab.backbones.text import TextClassifier, TextPreprocessor, build_text_classifier
from transferlab.catalog import ResolvedAsset
from transferlab.errors import UserError


def load_preprocessor(asset: ResolvedAsset, max_length: int) -> Preprocessor:
    try:
        return TextPreprocessor.from_pretrained(asset.path, max_length)
    except (OSError, ValueError) as err:
        raise UserError(f"backbone '{asset.name}': cannot load its tokenizer: {str(err).splitlines()[0]}") from None


def build_classifier(asset: ResolvedAsset, label_names: list[str], pooling: str) -> TransferModel:
    """The pretrained backbone with a new head for these labels."""
    try:
        return build_text_classifier(asset.path, len(label_names), label_names, pooling)
    except (OSError, ValueError) as err:
        raise UserError(f"backbone '{asset.name}': cannot load: {str(err).splitlines()[0]}") from None


__all__ = ["LayerGroup", "Preprocessor", "TransferModel", "TextClassifier", "TextPreprocessor", "build_classifier", "load_preprocessor"]
