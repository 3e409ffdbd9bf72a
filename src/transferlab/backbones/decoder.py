"""Decoder-only language models (Llama, Qwen, GPT-2, ...) as classifier bodies: the `decoder` family.

They classify through the same `TextClassifier` as encoders; what differs is here. Their blocks attend
causally, so only the last token has seen the whole input: pooling `auto` takes the last non-pad token,
as transformers' own `*ForSequenceClassification` decoders do, and `cls` pooling is refused. They keep
their pre-training head, so forgetting can be measured as the language model's perplexity on general
text (`causal_lm_with_body`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from transferlab.backbones.base import Preprocessor, TransferModel
from transferlab.backbones.registry import register_family
from transferlab.backbones.text import TransformersFamily, hub_or_folder_config
from transferlab.catalog import ResolvedAsset
from transferlab.errors import UserError

# Model types whose blocks attend causally.
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3", "gpt2", "gpt_neox", "olmo", "opt", "falcon")


def is_decoder_only(model_type: str, architectures: list[str] | None) -> bool:
    return model_type in DECODER_TYPES or any(a.endswith("ForCausalLM") for a in architectures or [])


@register_family
class DecoderFamily(TransformersFamily):
    name = "decoder"
    default_pooling = "last"
    has_lm_head = True

    def claims(self, spec: str) -> bool:
        values = hub_or_folder_config(spec)
        return values is not None and is_decoder_only(str(values.get("model_type", "")), values.get("architectures"))

    def claims_config(self, config: Any) -> bool:
        return is_decoder_only(config.model_type, getattr(config, "architectures", None))

    def preprocessor(
        self, asset: ResolvedAsset, max_length: int = 128, image_size: int = 224, normalization: str = "auto", augment: Sequence[str] = ()
    ) -> Preprocessor:
        """Many decoders' tokenizers have no pad token (GPT-2's, Llama 3's): batches then pad with the end-of-text token,
        as transformers' own decoder classifiers do; the attention mask hides it and last-token pooling skips it."""
        preprocessor = super().preprocessor(asset, max_length, image_size, normalization, augment)
        tokenizer = preprocessor.tokenizer
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise UserError(f"backbone '{asset.name}': its tokenizer has neither a pad token nor an end-of-text token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        return preprocessor

    def build(self, asset: ResolvedAsset, label_names: list[str], pooling: str = "auto") -> TransferModel:
        if pooling == "cls":
            raise UserError(f"cls pooling on the decoder {asset.path}: its first token sees nothing else; use last or mean")
        return super().build(asset, label_names, pooling)


def causal_lm_with_body(path: str, body: nn.Module) -> nn.Module:
    """The decoder at `path` as a causal LM whose body is replaced by `body`'s current weights.

    Measures what fine-tuning a classifier did to the language model: the body is shared with the LM,
    and a tied LM head (SmolLM2's) is the fine-tuned embedding matrix itself. `body` must hold plain
    weights: merge LoRA first (the strategy's `export`), so that the LM sees the adapted function.
    """
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(path)
    missing, unexpected = lm.get_decoder().load_state_dict(body.state_dict(), strict=False)
    if unexpected or missing:
        raise UserError(f"the fine-tuned body does not fit the language model of {path}: {(missing or unexpected)[:3]}")
    if getattr(lm.config, "tie_word_embeddings", False):
        lm.tie_weights()
    return lm.to(next(body.parameters()).device).eval()
