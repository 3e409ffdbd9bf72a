"""Every exported folder carries a model card whose front matter the Hub reads and whose metrics are the run's."""

from __future__ import annotations

import json

import pytest
import yaml

from transferlab.config import load_run_config
from transferlab.recipes import train as train_recipe
from transferlab.recipes.model_card import base_model_id


def _front_matter(folder) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("strategy, keep_adapter", [("head", False), ("lora", True)])
def test_the_model_card_states_the_runs_own_metrics(strategy, keep_adapter, tiny_bert_dir, sentiment_csv, tmp_path):
    config = load_run_config(
        None, backbone=str(tiny_bert_dir), dataset=str(sentiment_csv), strategies=[strategy], cv=1, n_train=64, n_test=16,
        label_issues=False, training={"epochs": 1, "batch_size": 8, "min_steps": 4},
    )  # fmt: skip
    train_recipe.train(config, tmp_path / "run", keep_adapter=keep_adapter, log=lambda _: None)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    meta = _front_matter(tmp_path / "run" / "model")
    assert meta["pipeline_tag"] == "text-classification" and meta["tags"] == ["transferlab", strategy]
    assert meta["library_name"] == ("peft" if keep_adapter else "transformers")
    assert "base_model" not in meta  # local weights have no Hub id
    reported = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    expected = {name: round(v["mean"], 4) for name, v in results["strategies"][strategy]["metrics"].items()}
    assert reported == expected and "accuracy" in reported
    body = (tmp_path / "run" / "model" / "README.md").read_text(encoding="utf-8")
    assert f"| accuracy | {results['strategies'][strategy]['metrics']['accuracy']['mean']:.4f} ±" in body
    if keep_adapter:  # peft finds the backbone from the adapter alone
        adapter = json.loads((tmp_path / "run" / "model" / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(tiny_bert_dir.resolve())


def test_hub_ids_of_the_backbones():
    assert base_model_id("minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_model_id("mobilenet-v2") is None  # torchvision's own weights
    assert base_model_id("some-org/some-model") == "some-org/some-model"
