"""Backbone families plug in by registration: a new one is one class, and every command finds it."""

from __future__ import annotations

import pytest

from transferlab.backbones import build_classifier, family_for, load_preprocessor, registry, resolve_backbone
from transferlab.backbones.text import TransformersFamily
from transferlab.catalog import ResolvedAsset, folder_asset
from transferlab.config import load_run_config
from transferlab.errors import UserError
from transferlab.strategies import STRATEGIES


@pytest.fixture
def toy_family(monkeypatch, tiny_bert_dir):
    """A family that reads `toy:NAME` as the tiny BERT, with its own defaults; unregistered afterwards."""
    monkeypatch.setattr(registry, "FAMILIES", dict(registry.FAMILIES))

    @registry.register_family
    class ToyFamily(TransformersFamily):
        name = "toy"
        augmentations = ("delete",)
        default_augment = ("delete",)
        strategy_defaults = {"full": {"lr": 0.125}}

        def claims(self, spec: str) -> bool:
            return spec.startswith("toy:")

        def resolve(self, spec: str) -> ResolvedAsset:
            return folder_asset(str(tiny_bert_dir), self.name)

    return ToyFamily


def test_a_registered_family_is_found_resolved_built_and_configured(toy_family, tiny_bert_dir):
    assert isinstance(family_for("toy:anything"), toy_family)
    asset = resolve_backbone("toy:anything")
    assert asset.family == "toy" and asset.path == str(tiny_bert_dir.resolve())
    model = build_classifier(asset, ["a", "b", "c"])
    assert model.forward_head(
        model.forward_features(**load_preprocessor(asset).collate(load_preprocessor(asset).encode(["good"])))
    ).shape == (1, 3)
    config = load_run_config(None, backbone="toy:anything", strategies=["full", "lora"])
    assert config.family.name == "toy"
    assert config.augmentations() == ["delete"]
    assert config.strategy("full").config.lr == 0.125  # the family's default
    assert config.strategy("lora").config.lr == STRATEGIES["lora"]().config.lr  # untouched: the strategy's own
    with pytest.raises(UserError, match="unknown text augmentation swap"):
        load_run_config(None, backbone="toy:anything", augment=["swap"])


def test_a_family_name_is_registered_once(toy_family):
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_family(toy_family)


def test_the_fallback_family_is_tried_last(toy_family, tiny_bert_dir):
    """The encoder family claims every folder; a more specific family claiming it first wins."""
    assert family_for(str(tiny_bert_dir)).name == "encoder"
    toy_family.claims = lambda self, spec: True
    assert family_for(str(tiny_bert_dir)).name == "toy"
