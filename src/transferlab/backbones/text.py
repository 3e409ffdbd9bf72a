"""Text encoders (BERT, MPNet, DistilBERT, RoBERTa, ...) through transformers' Auto classes: the `encoder` family.

The classifier also carries decoder bodies (the `decoder` family, decoder.py), which differ in how they
are recognised, pooled and measured, not in how they classify.

The classifier is a `PreTrainedModel`, so `save_pretrained` writes safetensors and a config that
`AutoModelForSequenceClassification.from_pretrained` loads once transferlab is imported.
Pooling is ours, not the model family's: the sentence-transformers checkpoints we ship were
trained for mean pooling, and BERT's own pooler (a tanh layer trained for next-sentence
prediction) is not part of them. Pooling `auto` is the family's choice (mean here).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from transferlab.backbones.adapters import insert_adapters
from transferlab.backbones.base import LayerGroup, Preprocessor, TransferModel, classification_loss, label_value
from transferlab.backbones.registry import BackboneFamily, family_of_config, register_family
from transferlab.catalog import ResolvedAsset, folder_asset, folder_config, looks_like_hub_id
from transferlab.errors import UserError

# auto: the backbone family's own (mean for encoders, the last non-pad token for decoders).
POOLINGS = ("auto", "mean", "cls", "last")
# EDA's word deletion and swaps (Wei and Zou 2019): extra training copies, made by data/augment.py.
TEXT_AUGMENTATIONS = ("delete", "swap")
# Which hidden states feed the head: the last layer, the one before it, the last four
# concatenated, or a learned softmax-weighted sum of the embeddings and every layer (ELMo's scalar mix, Peters et al. 2018).
FEATURE_LAYERS = ("last", "second_to_last", "last4", "weighted")

TOKENIZE_CHUNK = 1024  # texts per tokenizer call (see TextPreprocessor._tokenized)

# peft's tables know BERT and RoBERTa; these families name their projections differently.
EXTRA_LORA_TARGETS = {"mpnet": ["q", "v"], "distilbert": ["q_lin", "v_lin"]}
EXTRA_IA3_TARGETS = {"mpnet": (["k", "v", "output.dense"], ["output.dense"]), "distilbert": (["k_lin", "v_lin", "lin2"], ["lin2"])}


class TextClassifierConfig(PretrainedConfig):
    model_type = "transferlab_text_classifier"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config: PretrainedConfig | dict | None = None,
        pooling: str = "mean",
        feature_layers: str = "last",
        classifier_dropout: float = 0.1,
        adapters: dict | None = None,
        calibration_temperature: float = 1.0,
        unit_length: bool = False,
        **kwargs: Any,
    ):
        if isinstance(backbone_config, dict):
            backbone_config = AutoConfig.for_model(**backbone_config)
        self.backbone_config = backbone_config
        self.pooling = pooling
        self.feature_layers = feature_layers
        self.classifier_dropout = classifier_dropout
        self.adapters = adapters  # {"kind": "houlsby" | "pfeiffer", "r": bottleneck} once inserted
        self.calibration_temperature = calibration_temperature  # the logits are divided by it: temperature scaling, fitted after training
        self.unit_length = unit_length  # every pooled state scaled to unit L2 length (`set_unit_length`)
        super().__init__(**kwargs)
        if backbone_config is not None:
            # peft's prompt learning reads these from the top-level config.
            for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
                setattr(self, key, getattr(backbone_config, key, None))
            if getattr(backbone_config, "num_key_value_heads", None) is not None:  # grouped-query attention (Llama)
                self.num_key_value_heads = backbone_config.num_key_value_heads


class LayerMix(nn.Module):
    """A softmax-weighted sum of per-layer features (ELMo's scalar mix); starts as the plain mean."""

    def __init__(self, num_states: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_states))

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        return torch.einsum("l,lbd->bd", torch.softmax(self.weights, 0), torch.stack(states))


def _layer_list(backbone: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList]:
    """The encoder's stack of blocks: the ModuleList as long as the config's layer count."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return name, module
    raise ValueError(f"no list of {num_layers} layers in {type(backbone).__name__}")


class TextClassifier(PreTrainedModel, TransferModel):
    capabilities = frozenset({"tokens", "transformer_blocks", "layer_features", "prefix_cut"})
    feature_layer_choices = FEATURE_LAYERS
    gap_signal = "tokenizer"
    config_class = TextClassifierConfig
    base_model_prefix = "backbone"
    _no_split_modules: list[str] = []
    _supports_sdpa = True  # whatever the backbone supports; checked again when it is built

    def __init__(self, config: TextClassifierConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if backbone is not None:
            # The parent's __init__ resolved the attention kernel for its sub-configs; tell the loaded backbone.
            backbone.config._attn_implementation = config._attn_implementation
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.backbone_config)
        if getattr(self.backbone, "pooler", None) is not None:
            self.backbone.pooler = None  # unused by our pooling; would only add untrained parameters
        self.dropout = nn.Dropout(config.classifier_dropout)
        self._build_head()
        if config.adapters:
            self.add_adapters(**config.adapters)
        self.post_init()

    def _build_head(self) -> None:
        cfg = self.config
        hidden = cfg.backbone_config.hidden_size
        if cfg.feature_layers == "weighted":
            self.layer_mix = LayerMix(cfg.backbone_config.num_hidden_layers + 1)
            self.head_modules = ("layer_mix", "classifier")
        self.classifier = nn.Linear(hidden * (4 if cfg.feature_layers == "last4" else 1), cfg.num_labels)
        self._init_weights(self.classifier)

    def set_feature_layers(self, choice: str) -> None:
        super().set_feature_layers(choice)
        if choice != self.config.feature_layers:
            self.config.feature_layers = choice
            self._build_head()
            self.to(self.backbone.device)

    def add_adapters(self, kind: str, r: int) -> None:
        """Bottleneck adapters in every layer; recorded in the config so that loading rebuilds them."""
        insert_adapters(self.layer_stack(), self.config.backbone_config.hidden_size, kind, r)
        self.config.adapters = {"kind": kind, "r": r}
        self.to(self.backbone.device)

    def _init_weights(self, module: nn.Module) -> None:
        # Only the new head: the backbone's own weights are pretrained (or loaded by from_pretrained).
        if module is getattr(self, "classifier", None):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, LayerMix):
            nn.init.zeros_(module.weights)

    def layer_stack(self) -> nn.ModuleList:
        """The backbone's blocks, bottom first (what the `layer.i` groups own)."""
        return _layer_list(self.backbone, self.config.backbone_config.num_hidden_layers)[1]

    def prefix_units(self, groups: int) -> list[nn.Module]:
        """The blocks of layer groups 2..`groups`; the embeddings (group 1) are called with keywords, not cut."""
        return list(self.layer_stack())[: max(0, groups - 1)]

    # ------------------------------------------------------------------ the contract
    def layer_groups(self) -> list[LayerGroup]:
        """The embeddings, one group per block, the head. What lies outside the blocks joins the group beside it:
        before them (embeddings, their norm) the bottom group, after them (a decoder's final norm) the top block's."""
        stack_name, stack = _layer_list(self.backbone, self.config.backbone_config.num_hidden_layers)
        stack_prefix = f"backbone.{stack_name}."
        names = [f"backbone.{name}" for name, _ in self.backbone.named_parameters()]
        first_in_stack = next(i for i, name in enumerate(names) if name.startswith(stack_prefix))
        outside = {False: set(), True: set()}  # by whether the parameter comes after the blocks
        for i, name in enumerate(names):
            if not name.startswith(stack_prefix):
                outside[i > first_in_stack].add(f"{name.rsplit('.', 1)[0]}.")
        blocks = [[f"{stack_prefix}{i}."] for i in range(len(stack))]
        blocks[-1] += sorted(outside[True])
        return (
            [LayerGroup("embeddings", tuple(sorted(outside[False])))]
            + [LayerGroup(f"layer.{i + 1}", tuple(prefixes)) for i, prefixes in enumerate(blocks)]
            + [LayerGroup("head", tuple(f"{name}." for name in self.head_modules))]
        )

    @property
    def has_lm_head(self) -> bool:
        return family_of_config(self.config.backbone_config).has_lm_head

    def pooling(self) -> str:
        """The pooling in effect: `auto` resolved for the body's family."""
        choice = self.config.pooling
        if choice == "auto":
            return family_of_config(self.config.backbone_config).default_pooling
        return choice

    def set_unit_length(self, on: bool) -> None:
        self.config.unit_length = on

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self._pool_positions(hidden, attention_mask)
        return nn.functional.normalize(pooled, dim=-1) if self.config.unit_length else pooled

    def _pool_positions(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Under prefix tuning the mask also covers the virtual keys in front: pool over the real tokens.
        attention_mask = attention_mask[:, -hidden.shape[1] :]
        pooling = self.pooling()
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "last":  # the last position the mask keeps, whichever side the padding is on
            positions = torch.arange(hidden.shape[1], device=hidden.device)
            last = (attention_mask.to(torch.long) * positions).argmax(1)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def _encode(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, output_hidden_states: bool = False, **inputs: torch.Tensor
    ):
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states, **inputs)

    def forward_features(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        choice = self.config.feature_layers
        if choice == "last":
            return self._pool(self._encode(input_ids, attention_mask, **inputs).last_hidden_state, attention_mask)
        return self.combine_layers(self.pooled_hidden_states(input_ids, attention_mask, **inputs))

    def combine_layers(self, states: list[torch.Tensor]) -> torch.Tensor:
        """The head's input from the pooled state of every layer, as `feature_layers` says."""
        choice = self.config.feature_layers
        if choice == "second_to_last":
            return states[-2]
        if choice == "last4":
            return torch.cat(states[-4:], dim=-1)
        if choice == "weighted":
            return self.layer_mix(states)
        return states[-1]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))

    def feature_dim(self) -> int:
        return self.config.backbone_config.hidden_size

    def pooled_hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor) -> list[torch.Tensor]:
        out = self._encode(input_ids, attention_mask, output_hidden_states=True, **inputs)
        return [self._pool(h, attention_mask) for h in out.hidden_states]

    def default_lora_targets(self) -> list[str]:
        from peft.utils import constants

        return list(self._family_default(constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, EXTRA_LORA_TARGETS, "LoRA"))

    def default_ia3_targets(self) -> tuple[list[str], list[str]]:
        from peft.utils import constants

        model_type = self.config.backbone_config.model_type
        if model_type in EXTRA_IA3_TARGETS:
            targets, feedforward = EXTRA_IA3_TARGETS[model_type]
            return list(targets), list(feedforward)
        targets = self._family_default(constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING, {}, "IA3")
        return list(targets), list(constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, []))

    def _family_default(self, peft_table: dict, ours: dict, method: str) -> list[str]:
        model_type = self.config.backbone_config.model_type
        targets = peft_table.get(model_type) or ours.get(model_type)
        if not targets:
            raise UserError(f"no default {method} target modules for '{model_type}': set target_modules in the strategy settings")
        return targets

    # ------------------------------------------------------------------ HF interface
    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: Any = None,  # named here: peft's prefix tuning looks for it in the signature
        **inputs: Any,
    ) -> SequenceClassifierOutput:
        inputs = {k: v for k, v in inputs.items() if k in ("token_type_ids", "position_ids", "inputs_embeds")}
        if past_key_values is not None:
            inputs["past_key_values"] = past_key_values
        if attention_mask is None:
            reference = input_ids if input_ids is not None else inputs["inputs_embeds"][..., 0]
            attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        logits = self.forward_head(self.forward_features(input_ids, attention_mask, **inputs)) / self.config.calibration_temperature
        loss = classification_loss(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(TextClassifierConfig.model_type, TextClassifierConfig)
AutoModelForSequenceClassification.register(TextClassifierConfig, TextClassifier)


class TextPreprocessor(Preprocessor):
    """The backbone's own tokenizer; padding happens per batch, to the longest example in it."""

    def __init__(self, tokenizer: Any, max_length: int = 128):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._collator = DataCollatorWithPadding(tokenizer)

    @classmethod
    def from_pretrained(cls, path: str, max_length: int = 128) -> TextPreprocessor:
        return cls(AutoTokenizer.from_pretrained(path), max_length)

    def encode(self, inputs: Sequence[str], labels: Sequence[int] | None = None) -> list[dict[str, Any]]:
        features = []
        for encoded in self._tokenized(inputs, truncation=True, max_length=self.max_length):
            features += [dict(zip(encoded.keys(), values)) for values in zip(*encoded.values())]
        if labels is not None:
            for feature, label in zip(features, labels):
                feature["labels"] = label_value(label)
        return features

    def token_counts(self, inputs: Sequence[str]) -> np.ndarray:
        """Each text's length in tokens before truncation: how much of it `max_length` cuts."""
        return np.array([len(ids) for encoded in self._tokenized(inputs, return_attention_mask=False) for ids in encoded["input_ids"]])

    def _tokenized(self, inputs: Sequence[str], **options: Any) -> Iterator[Any]:
        """The tokenizer's output, `TOKENIZE_CHUNK` texts at a time: what one call allocates beside its result (each
        text's tokens, offsets and overflow) is freed but kept by the process, so a single call over every text
        raised the peak in proportion to the data; chunks reuse that memory."""
        for start in range(0, len(inputs), TOKENIZE_CHUNK):
            yield self.tokenizer(list(inputs[start : start + TOKENIZE_CHUNK]), **options)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self._collator(features)

    def save(self, directory: Path) -> None:
        self.tokenizer.model_max_length = self.max_length
        self.tokenizer.save_pretrained(directory)

    @staticmethod
    def length_of(feature: dict[str, Any]) -> int:
        return len(feature["input_ids"])


def build_text_classifier(path: str, num_labels: int, label_names: list[str], pooling: str = "auto") -> TextClassifier:
    """A pretrained encoder (or decoder body) with a new, randomly initialised head for `num_labels` classes."""
    backbone = AutoModel.from_pretrained(path)
    dropout = getattr(backbone.config, "classifier_dropout", None)  # as Hugging Face's own classifiers choose it
    config = TextClassifierConfig(
        backbone_config=backbone.config,
        classifier_dropout=getattr(backbone.config, "hidden_dropout_prob", 0.1) if dropout is None else dropout,
        pooling=pooling,
        num_labels=num_labels,
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    if getattr(backbone.config, "pad_token_id", None) is not None:
        config.pad_token_id = backbone.config.pad_token_id  # decoders: padding must be known to find the last token
    return TextClassifier(config, backbone=backbone)


class TransformersFamily(BackboneFamily):
    """A body that transformers' Auto classes load, read through its own tokenizer."""

    inputs = "text"
    library_name = "transformers"
    augmentations = TEXT_AUGMENTATIONS
    augments_copies = True

    def resolve(self, spec: str) -> ResolvedAsset:
        if looks_like_hub_id(spec):
            return ResolvedAsset(spec, spec, {}, self.name)
        return folder_asset(spec, self.name)

    def build(self, asset: ResolvedAsset, label_names: list[str], pooling: str = "auto") -> TransferModel:
        try:
            return build_text_classifier(asset.path, len(label_names), label_names, pooling)
        except (OSError, ValueError) as err:
            raise UserError(f"backbone '{asset.name}': cannot load: {str(err).splitlines()[0]}") from None

    def preprocessor(
        self, asset: ResolvedAsset, max_length: int = 128, image_size: int = 224, normalization: str = "auto", augment: Sequence[str] = ()
    ) -> Preprocessor:
        try:
            preprocessor = TextPreprocessor.from_pretrained(asset.path, max_length)
        except (OSError, ValueError) as err:
            raise UserError(f"backbone '{asset.name}': cannot load its tokenizer: {str(err).splitlines()[0]}") from None
        limit = preprocessor.tokenizer.model_max_length  # a huge number when the tokenizer does not say
        if max_length > limit:  # past the position embeddings, the first long text would fail inside the model
            raise UserError(f"--max-length {max_length} is more than the {limit} tokens backbone '{asset.name}' reads")
        return preprocessor

    def load_merged(self, model_dir: Path) -> nn.Module:
        return AutoModelForSequenceClassification.from_pretrained(str(model_dir))

    def load_preprocessor(self, model_dir: Path, manifest: dict[str, Any]) -> Preprocessor:
        return TextPreprocessor.from_pretrained(str(model_dir), manifest["max_length"])


@register_family
class EncoderFamily(TransformersFamily):
    """Any Hugging Face model folder or hub id no other family claims: encoders such as BERT and MPNet."""

    name = "encoder"
    fallback = True

    def claims(self, spec: str) -> bool:
        return Path(spec).expanduser().is_dir() or looks_like_hub_id(spec)


def hub_or_folder_config(spec: str) -> dict | None:
    """A model folder's config.json; for a hub id the user named, its config from the hub (None offline)."""
    values = folder_config(spec)
    if values is not None or not looks_like_hub_id(spec):
        return values
    return _hub_config(spec)


@functools.cache
def _hub_config(hub_id: str) -> dict | None:
    """Asked of the hub once per process: a run config asks for its backbone's family many times."""
    try:
        return AutoConfig.from_pretrained(hub_id).to_dict()
    except (OSError, ValueError):
        return None


def drop_output_capturing_hooks(model: nn.Module) -> None:
    """Make a model that returned hidden states picklable again.

    transformers 5 captures hidden states with forward hooks that are local closures, installed on first use and
    left on the modules; pickle cannot store them. They are removed here and the model is marked as having none,
    so transformers installs them again the next time hidden states are asked for.
    """
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__qualname__", "").startswith("install_output_capuring_hook."):
                del module._forward_hooks[key]
        if getattr(module, "_output_capturing_hooks_installed", False):
            module._output_capturing_hooks_installed = False
