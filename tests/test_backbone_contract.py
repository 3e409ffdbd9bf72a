"""The backbone contract on every tiny family: groups, pooling, hidden states, save and load."""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification

from transferlab.backbones import TextPreprocessor, build_classifier, resolve_backbone


def _model_and_batch(path, pooling="mean"):
    asset = resolve_backbone(str(path))
    model = build_classifier(asset, ["negative", "positive"], pooling).eval()
    pre = TextPreprocessor.from_pretrained(asset.path, 32)
    batch = pre.collate(pre.encode(["the film was good", "a very very boring and dull plot"]))
    return model, pre, batch


def test_texts_tokenized_in_chunks_are_what_one_call_gives(tiny_bert_dir, monkeypatch):
    """Chunks bound the tokenizer's scratch memory; they must not change a token or a count."""
    monkeypatch.setattr("transferlab.backbones.text.TOKENIZE_CHUNK", 3)
    pre = TextPreprocessor.from_pretrained(resolve_backbone(str(tiny_bert_dir)).path, 8)
    texts = [" ".join(["word"] * n) + f" text {n}" for n in range(1, 12)]  # 11 texts: 4 chunks, the last of 2
    whole = pre.tokenizer(texts, truncation=True, max_length=8)
    assert pre.encode(texts, list(range(11))) == [
        {
            "input_ids": whole["input_ids"][i],
            "token_type_ids": whole["token_type_ids"][i],
            "attention_mask": whole["attention_mask"][i],
            "labels": i,
        }
        for i in range(11)
    ]
    assert pre.token_counts(texts).tolist() == [n + 4 for n in range(1, 12)]  # n words, "text", the number, [CLS], [SEP]


def test_layer_groups_cover_every_parameter_once_in_order(tiny_backbone):
    model, _, _ = _model_and_batch(tiny_backbone)
    groups = model.layer_groups()
    layers = model.config.backbone_config.num_hidden_layers
    assert [g.name for g in groups] == ["embeddings"] + [f"layer.{i}" for i in range(1, layers + 1)] + ["head"]
    for name, _ in model.named_parameters():
        owners = [g.name for g in groups if g.owns(name)]
        assert len(owners) == 1, (name, owners)
    assert {model.group_of(n) for n, _ in model.named_parameters() if n.startswith("classifier")} == {"head"}


def test_a_decoders_final_norm_belongs_to_its_top_block(tiny_llama_dir):
    """The norm after a decoder's last block sits just under the head: discriminative rates give it the top block's
    rate, and partial freezing and gradual unfreezing treat it with that block, not with the embeddings."""
    model, _, _ = _model_and_batch(tiny_llama_dir, pooling="last")
    owners = {name: model.group_of(name) for name, _ in model.named_parameters()}
    assert owners["backbone.norm.weight"] == "layer.2" and owners["backbone.embed_tokens.weight"] == "embeddings"
    assert owners["backbone.layers.0.input_layernorm.weight"] == "layer.1"


def test_hidden_states_one_per_layer_and_last_is_the_feature(tiny_backbone):
    model, _, batch = _model_and_batch(tiny_backbone)
    with torch.no_grad():
        states = model.pooled_hidden_states(**batch)
        features = model.forward_features(**batch)
    assert len(states) == model.config.backbone_config.num_hidden_layers + 1
    # exactly: the data checks cache states[-1] for the head, which then serves through forward_features
    assert torch.equal(states[-1], features)


def test_mean_pooling_ignores_padding(tiny_bert_dir):
    model, pre, _ = _model_and_batch(tiny_bert_dir)
    short = pre.collate(pre.encode(["the film was good"]))
    padded = pre.collate(pre.encode(["the film was good", "a b c the film was good and the plot was very very dull"]))
    with torch.no_grad():
        alone = model.forward_features(**short)[0]
        beside_longer = model.forward_features(**padded)[0]
    torch.testing.assert_close(alone, beside_longer, atol=1e-5, rtol=1e-5)


def test_cls_pooling_takes_the_first_token(tiny_bert_dir):
    model, _, batch = _model_and_batch(tiny_bert_dir, pooling="cls")
    with torch.no_grad():
        hidden = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        torch.testing.assert_close(model.forward_features(**batch), hidden[:, 0])


def test_new_head_leaves_pretrained_weights_untouched_and_round_trips(tiny_backbone, tmp_path):
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(tiny_backbone)
    model, _, batch = _model_and_batch(tiny_backbone)
    for name, tensor in reference.state_dict().items():
        if not name.startswith("pooler"):
            torch.testing.assert_close(model.backbone.state_dict()[name], tensor, atol=0, rtol=0)
    model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reloaded(**batch).logits, atol=1e-6, rtol=0)
    assert reloaded.config.id2label == {0: "negative", 1: "positive"}
