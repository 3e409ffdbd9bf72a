"""Every registered strategy survives `transferlab train`'s export: what `predict` loads (and, for a merged export,
what plain `AutoModelForSequenceClassification` loads) gives the probabilities the in-memory model gave, to 1e-5.

One fast representative per family of strategy runs by default (the frozen-body head, full-weight fine-tuning,
peft merged into the weights, bottleneck adapters, peft virtual tokens, SetFit); the others are marked slow."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import transferlab.backbones  # noqa: F401  (what the README says a user imports before loading with transformers)
from transferlab.backbones import build_classifier, resolve_backbone
from transferlab.config import load_run_config
from transferlab.recipes import train as train_recipe
from transferlab.recipes.loading import load_model
from transferlab.strategies import STRATEGIES, get_strategy
from transferlab.training.inference import predict_proba

LABELS = ["negative", "positive"]
# A few texts outside the training data: sentiment words, words the vocabulary lacks ([UNK]), a long one, a short one.
TEXTS = [
    "the film was good",
    "a boring and dull plot but the actors were superb",
    "an unexpected masterpiece of modern cinema",
    "terrible",
    "the story is a very lovely story and the plot was fine but the movie is awful and the actors are poor " * 2,
]
FAST = {"head", "full", "lora", "houlsby", "prompt", "setfit"}  # one per family of strategy
QUICK = {"setfit": {"pair_iterations": 1}}  # SetFit's 20 pair iterations would be hundreds of steps


def _config(backbone, dataset, name, max_length=32):
    """64 training sentences, 1 epoch, at least 4 steps; 32 tokens (the tiny BERT has 64 positions, 20 of which prompt
    tuning's virtual tokens take), so the long text in TEXTS is truncated, by the exported tokenizer too."""
    return load_run_config(
        None,
        backbone=str(backbone),
        dataset=str(dataset),
        strategies=[name],
        strategy_settings={name: QUICK[name]} if name in QUICK else {},
        cv=1,
        n_train=64,
        n_test=16,
        label_issues=False,
        max_length=max_length,
        training={"epochs": 1, "batch_size": 8, "min_steps": 4},
    )


def _train_and_watch(monkeypatch, config, out, keep_adapter=False):
    """`transferlab train`, with the in-memory model's probabilities on TEXTS taken the moment it is handed to export."""
    seen = {}
    real_export = train_recipe.export

    def watched(run, experiment, target, keep, *record):
        pre = experiment.preprocessor
        seen["probs"] = predict_proba(run.model, pre.encode(TEXTS), pre.collate, pre.length_of)
        return real_export(run, experiment, target, keep, *record)

    monkeypatch.setattr(train_recipe, "export", watched)
    run, record = train_recipe.train(config, out, keep_adapter=keep_adapter, log=lambda _: None)
    assert record["status"] == "complete"
    return run, seen["probs"]


def _plain_transformers_probs(model_dir) -> np.ndarray:
    """The merged export as a transformers user loads it: the Auto classes, the saved tokenizer, a softmax."""
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")).logits  # its saved max length
    return torch.softmax(logits.float(), -1).numpy()


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in STRATEGIES])
def test_every_strategy_exports_what_it_trained(name, tiny_bert_dir, sentiment_csv, tmp_path, monkeypatch):
    reason = get_strategy(name).unsupported_reason(build_classifier(resolve_backbone(str(tiny_bert_dir)), LABELS, "mean"))
    if reason:
        pytest.skip(reason)
    run, in_memory = _train_and_watch(monkeypatch, _config(tiny_bert_dir, sentiment_csv, name), tmp_path / name)
    model_dir = tmp_path / name / "model"
    manifest = json.loads((model_dir / "transferlab.json").read_text())
    assert manifest["strategy"] == name and manifest["label_names"] == LABELS

    loaded = load_model(model_dir)
    assert loaded.label_names == LABELS
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), in_memory, atol=1e-5, rtol=0)
    if manifest["format"] == "merged":
        np.testing.assert_allclose(_plain_transformers_probs(model_dir), in_memory, atol=1e-5, rtol=0)
    else:  # only peft strategies that cannot merge (virtual tokens) leave an adapter without being asked to
        assert STRATEGIES[name].uses_peft and name in ("prompt", "prefix"), manifest["format"]


@pytest.mark.parametrize(
    "name",
    [
        n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
        for n, cls in STRATEGIES.items()
        if cls.uses_peft and n not in ("prompt", "prefix")
    ],
)
def test_a_kept_adapter_exports_what_it_trained(name, tiny_bert_dir, sentiment_csv, tmp_path, monkeypatch):
    """`train --keep-adapter`: the folder is a peft adapter over the backbone, loaded by predict's loader."""
    _, in_memory = _train_and_watch(monkeypatch, _config(tiny_bert_dir, sentiment_csv, name), tmp_path / name, keep_adapter=True)
    model_dir = tmp_path / name / "model"
    assert json.loads((model_dir / "transferlab.json").read_text())["format"] == "peft-adapter"
    np.testing.assert_allclose(load_model(model_dir).predict_proba(TEXTS), in_memory, atol=1e-5, rtol=0)


def test_a_fresh_interpreter_loads_the_merged_export_after_importing_backbones(tiny_bert_dir, sentiment_csv, tmp_path, monkeypatch):
    """The README's promise, in a new Python process where nothing but `import transferlab.backbones` has run."""
    _, in_memory = _train_and_watch(monkeypatch, _config(tiny_bert_dir, sentiment_csv, "head"), tmp_path / "head")
    script = (
        "import json, sys, torch\n"
        "import transferlab.backbones\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "path, texts = sys.argv[1], json.loads(sys.argv[2])\n"
        "model = AutoModelForSequenceClassification.from_pretrained(path).eval()\n"
        "tokens = AutoTokenizer.from_pretrained(path)(texts, padding=True, truncation=True, return_tensors='pt')\n"
        "with torch.no_grad():\n"
        "    print(json.dumps(torch.softmax(model(**tokens).logits.float(), -1).tolist()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "head" / "model"), json.dumps(TEXTS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.array(json.loads(done.stdout.splitlines()[-1])), in_memory, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family, usable", [("bert", 64), ("roberta", 63)])
def test_prompt_tuning_with_max_length_near_the_backbones_positions(request, family, usable, sentiment_csv, tmp_path):
    """The tiny models have 64 positions, of which RoBERTa's inputs fill 63 (it numbers them from its padding index
    + 1). 20 virtual tokens beside longer inputs would fail in the embeddings on the first long text, so the run is
    refused with the length that fits; at that length it classifies a long text."""
    from transferlab.errors import UserError

    backbone = request.getfixturevalue(f"tiny_{family}_dir")
    fits = usable - 20
    with pytest.raises(UserError, match=f"more than the backbone's {usable} positions: use --max-length {fits} or fewer"):
        train_recipe.train(_config(backbone, sentiment_csv, "prompt", max_length=fits + 1), tmp_path / "long", log=lambda _: None)
    train_recipe.train(_config(backbone, sentiment_csv, "prompt", max_length=fits), tmp_path / "prompt", log=lambda _: None)
    probs = load_model(tmp_path / "prompt" / "model").predict_proba([" ".join([TEXTS[-1]] * 4)])
    assert probs.shape == (1, 2) and np.isfinite(probs).all()
