"""`train` exports what `predict` loads: the same probabilities as the in-memory model, to 1e-5."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from transferlab.config import load_run_config
from transferlab.errors import UserError
from transferlab.recipes.loading import load_model
from transferlab.recipes.train import train


def _train(tmp_path, backbone, dataset, strategy, keep_adapter=False):
    config = load_run_config(
        None,
        backbone=str(backbone),
        dataset=str(dataset),
        strategies=[strategy],
        cv=1,
        n_train=120,
        n_test=40,
        max_length=40,  # the tiny BERT has 64 positions; prompt tuning's 20 virtual tokens take the rest
        training={"epochs": 2, "batch_size": 8},
    )
    out = tmp_path / f"{strategy}-{keep_adapter}"
    run, record = train(config, out, keep_adapter=keep_adapter, log=lambda _: None)
    return out, run, record


@pytest.mark.parametrize(
    "strategy, keep_adapter",
    [
        ("full", False),
        ("lora", False),
        ("lora", True),
        ("head", False),
        ("head-all-layers", False),
        ("houlsby", False),
        ("prompt", False),
        ("prefix", False),
        ("ia3", False),
    ],
)
def test_exported_model_predicts_like_the_trained_one(tmp_path, tiny_bert_dir, sentiment_csv, strategy, keep_adapter):
    out, run, record = _train(tmp_path, tiny_bert_dir, sentiment_csv, strategy, keep_adapter)
    assert record["status"] == "complete"
    files = {p.name for p in (out / "model").iterdir()}
    adapter = keep_adapter or strategy in ("prompt", "prefix")  # virtual tokens cannot be merged into weights
    assert json.loads((out / "model" / "transferlab.json").read_text())["format"] == ("peft-adapter" if adapter else "merged")
    assert ("adapter_model.safetensors" if adapter else "model.safetensors") in files
    assert {"tokenizer.json", "transferlab.json"} <= files
    loaded = load_model(out / "model")
    assert loaded.label_names == ["negative", "positive"]
    from transferlab.data.catalog import load_dataset
    from transferlab.data.splits import stratified_split

    config = load_run_config(None, dataset=str(sentiment_csv), n_train=120, n_test=40)
    test_texts = stratified_split(load_dataset(str(sentiment_csv)), 120, 40, config.val_fraction, 0).part("test").inputs
    np.testing.assert_allclose(loaded.predict_proba(test_texts), run.test_probs, atol=1e-5, rtol=0)


def test_predict_command_line(tmp_path, tiny_bert_dir, sentiment_csv):
    out, run, _ = _train(tmp_path, tiny_bert_dir, sentiment_csv, "full")
    texts = ["the film was good", "a boring plot"]
    result = tmp_path / "pred.jsonl"
    args = [sys.executable, "-m", "transferlab.cli", "predict", "--model", str(out / "model"), "--output", str(result)]
    done = subprocess.run(args + [a for t in texts for a in ("--text", t)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    expected = load_model(out / "model").predict_proba(texts)
    assert [r["label"] for r in rows] == [["negative", "positive"][i] for i in expected.argmax(1)]
    np.testing.assert_allclose([[r["p_negative"], r["p_positive"]] for r in rows], expected, atol=1e-6)


def test_predict_shows_texts_and_reads_lines_as_given(tmp_path, tiny_bert_dir, sentiment_csv):
    from typer.testing import CliRunner

    from transferlab.cli import app

    out, _, _ = _train(tmp_path, tiny_bert_dir, sentiment_csv, "full")
    shown = CliRunner().invoke(app, ["predict", "--model", str(out / "model"), "--text", "[/b] closing tag", "--text", "[b]bold[/b]"])
    assert shown.exit_code == 0, shown.output
    assert "[/b] closing tag" in shown.output and "[b]bold[/b]" in shown.output  # printed as written, not read as markup
    lines = tmp_path / "texts.txt"
    lines.write_bytes("a line with\u2028a line separator\r\nform\x0cfeed\n\nlast".encode())
    result = tmp_path / "pred.jsonl"
    done = CliRunner().invoke(app, ["predict", "--model", str(out / "model"), "--input", str(lines), "--output", str(result)])
    assert done.exit_code == 0, done.output
    texts = [json.loads(line)["text"] for line in result.read_text(encoding="utf-8").strip().split("\n")]
    assert texts == ["a line with\u2028a line separator", "form\x0cfeed", "last"]


def test_a_folder_without_a_finished_export_is_refused(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(UserError, match="not a model exported by 'transferlab train'"):
        load_model(tmp_path / "model")


def test_same_seed_same_numbers(tiny_bert_dir, sentiment_csv):
    from transferlab.recipes.experiment import prepare, run_strategy

    config = load_run_config(
        None, backbone=str(tiny_bert_dir), dataset=str(sentiment_csv), n_train=120, n_test=40, training={"epochs": 1, "batch_size": 8}
    )
    experiment = prepare(config, log=lambda _: None)
    first, second = (run_strategy(experiment, "lora") for _ in range(2))
    assert first.result["metrics"] == second.result["metrics"]
    np.testing.assert_array_equal(first.test_probs, second.test_probs)
