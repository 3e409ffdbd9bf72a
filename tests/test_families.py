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


def _first_block(architecture: str):
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    shape = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=40)
    if architecture == "bert":
        return BertModel(BertConfig(**shape)).encoder.layer[0]
    if architecture == "distilbert":
        return DistilBertModel(DistilBertConfig(vocab_size=40, dim=32, n_layers=1, n_heads=4, hidden_dim=64)).transformer.layer[0]
    if architecture == "llama-gqa":  # SmolLM2's shape: fewer key/value heads, so k_proj and v_proj are narrower
        return LlamaModel(LlamaConfig(**shape, num_key_value_heads=2)).layers[0]
    if architecture == "llama":
        return LlamaModel(LlamaConfig(**shape)).layers[0]
    return GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=40)).h[0]


@pytest.mark.parametrize(
    "architecture, expected",
    [
        ("bert", {"attention": "attention.output.dense", "ffn": "output.dense"}),
        ("distilbert", {"attention": "attention.out_lin", "ffn": "ffn.lin2"}),
        ("llama", {"attention": "self_attn.o_proj", "ffn": "mlp.down_proj"}),
        ("llama-gqa", {"attention": "self_attn.o_proj", "ffn": "mlp.down_proj"}),
    ],
)
def test_bottleneck_adapters_sit_after_each_blocks_output_projections(architecture, expected):
    """Houlsby et al. adapt the attention block's output and the feed-forward block's output: the names are the
    architectures' own, written out here."""
    from transferlab.backbones.adapters import output_projections

    assert output_projections(_first_block(architecture), 32) == expected


def test_bottleneck_adapters_refuse_a_block_without_linear_projections():
    from transferlab.backbones.adapters import output_projections

    with pytest.raises(UserError, match="bottleneck adapters find no attention and feed-forward projections"):
        output_projections(_first_block("gpt2"), 32)  # GPT-2's projections are Conv1D layers
