"""The command line end to end on a tiny model (bad input: tests/test_bad_input.py), and its options: each one
declared once, on its config field, and shown with that help by `--help`; the example configs in configs/ load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from transferlab.cli import app
from transferlab.cli.options import _owners, build_run_config, option
from transferlab.config import load_run_config

ROOT = Path(__file__).resolve().parents[1]
RUN_COMMANDS = ("compare", "train", "check", "forgetting", "study")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "transferlab.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_compare_writes_the_documented_results(tmp_path, tiny_bert_dir, sentiment_csv):
    out = tmp_path / "run"
    (tmp_path / "fast.yaml").write_text("training:\n  min_steps: 0\n")  # one epoch, not the 100-step floor
    done = _cli(
        "compare",
        "--config",
        tmp_path / "fast.yaml",
        "--backbone",
        tiny_bert_dir,
        "--dataset",
        sentiment_csv,
        "--n-train",
        120,
        "--n-test",
        40,
        "--cv",
        1,
        "--epochs",
        1,
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr
    for name in ("head", "full", "lora"):
        assert name in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    assert (results["n_train"], results["n_test"]) == (120, 40)
    assert set(results["strategies"]) == {"head", "full", "lora"}
    for r in results["strategies"].values():
        assert set(r["metrics"]) >= {"accuracy", "macro_f1", "precision", "recall", "f1", "auroc", "mcc"}
        assert r["metrics"]["accuracy"]["std"] == 0.0 and 0 <= r["metrics"]["accuracy"]["mean"] <= 1
        assert 0 < r["trainable_params"] <= r["total_params"]
        assert r["train_seconds"] > 0 and r["peak_memory_mb"] >= 0
    assert results["strategies"]["full"]["trainable_params"] == results["strategies"]["full"]["total_params"]
    assert results["environment"]["packages"]["torch"]
    assert (out / "config.yaml").is_file() and (out / "strategies" / "full" / "log-fold1-seed0.jsonl").is_file()
    assert (out / "report.html").read_text().count('<img alt="') == 3 and (out / "report.md").is_file()  # curves, confusion, reliability
    for r in results["strategies"].values():  # 108 training examples leave 12 for validation: too few to fit a temperature
        assert r["calibration"]["temperature"]["mean"] == 1.0 and {"ece", "brier"} <= set(r["metrics"])


def _listed(command: str) -> tuple[str, ...]:
    (info,) = [c for c in app.registered_commands if c.name == command]
    return info.callback.option_names


def test_every_option_a_command_lists_is_one_config_field_with_help():
    """An option is declared once: a field of RunConfig, TrainingConfig or ForgettingConfig (or the strategy-wide or
    run-folder table), with its help text beside it; a name two places declare would route ambiguously."""
    commands = [c.name for c in app.registered_commands if hasattr(c.callback, "option_names")]
    assert set(RUN_COMMANDS) <= set(commands)
    for command in commands:
        for name in _listed(command):
            assert len(_owners(name)) == 1, (command, name, _owners(name))
            assert option(name).help, (command, name)
    with pytest.raises(LookupError, match="exactly once"):
        option("no_such_option")


def test_help_answers_without_loading_torch_or_scikit_learn():
    """Help is read before anything runs; loading torch for it cost seconds per call."""
    probe = (
        "import sys; from transferlab.cli import app\n"
        "for args in (['--help'], ['compare', '--help'], ['forgetting', '--help']):\n"
        "    try: app(args)\n"
        "    except SystemExit: pass\n"
        "print('loaded:', sorted(m for m in ('torch', 'sklearn', 'transformers.modeling_utils') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "loaded: []"


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_help_shows_each_options_help(command, monkeypatch):
    done = CliRunner().invoke(app, [command, "--help"])
    assert done.exit_code == 0, done.output
    page = " ".join(done.output.split())
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    for name in _listed(command):
        spec = option(name)
        assert spec.flag.split("/")[0] in params[name].opts
        if command != "study":  # the study says its budget sets n_train, epochs ... unless given
            assert params[name].help == spec.help
        assert f"{spec.flag.split('/')[0]} " in page, name
        assert "".join(params[name].help.split()) in "".join(page.split()), name  # wrapped anywhere; [default: ...] kept


def test_each_option_reaches_its_section_of_the_run_config():
    options = {"n_train": 64, "epochs": 2.0, "ewc_lambda": 5.0, "mitigations": ["ewc"], "layer_decay": 0.9, "out_dir": None}
    config = build_run_config({**options, "config": ROOT / "configs" / "small-data.yaml"}, ["full", "lora"])
    assert (config.n_train, config.training.epochs, config.training.min_steps) == (64, 2.0, 100)
    assert (config.forgetting.ewc_lambda, config.forgetting.mitigations) == (5.0, ["ewc"])
    assert config.strategy_settings == {"full": {"layer_decay": 0.9}, "lora": {"layer_decay": 0.9}}


@pytest.mark.parametrize(
    "written, augment, strategies",
    [
        ("augment: none\nstrategies: head", [], ["head"]),
        ("augment: flip, crop\nstrategies: head,lora", ["flip", "crop"], ["head", "lora"]),
        ("augment: [flip]\nstrategies: [full]", ["flip"], ["full"]),
    ],
)
def test_a_config_file_writes_lists_as_the_command_line_does(tmp_path, written, augment, strategies):
    (tmp_path / "c.yaml").write_text(written + "\nbackbone: mobilenet-v2\n")
    config = load_run_config(tmp_path / "c.yaml")
    assert (config.augmentations(), config.strategies) == (augment, strategies)


EXAMPLE_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_the_example_configs_are_there():
    assert {p.name for p in EXAMPLE_CONFIGS} >= {"compare-default.yaml", "small-data.yaml", "images.yaml", "forgetting-ewc.yaml"}


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_an_example_config_loads_and_says_what_it_is_for(path):
    assert path.read_text(encoding="utf-8").startswith("# ")
    load_run_config(path)


def test_auto_on_too_few_examples_says_it_trained_the_recommendation(tmp_path, tiny_bert_dir, sentiment_csv):
    (tmp_path / "quick.yaml").write_text("strategy_settings:\n  setfit: {pair_iterations: 2}\n")
    out = tmp_path / "few"
    done = _cli(
        "auto", "--backbone", tiny_bert_dir, "--dataset", sentiment_csv, "--n-train", "120", "--max-length", "40",
        "--strategies", "head,setfit", "--budget", "1m", "--config", tmp_path / "quick.yaml", "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "search:" not in done.stdout and "leaderboard.csv" not in done.stdout
    assert "no search: the recommended setfit was trained" in " ".join((done.stdout + done.stderr).split())
    assert (out / "model" / "transferlab.json").is_file()


def test_a_small_file_with_a_rare_class_is_compared_on_as_many_folds_as_that_class_has(tmp_path, tiny_bert_dir, sentiment_csv):
    """40 examples of two classes and 3 of a third: five default folds cannot each test the third, three can, and
    each fold's training, validation and test parts hold every class."""
    rows = pd.read_csv(sentiment_csv).head(40)
    neutral = ["the screening started at nine in hall two", "tickets were sold out on the first weekend", "its director was born in lyon"]
    rare = pd.DataFrame({"text": neutral, "label": ["neutral"] * 3})
    path = tmp_path / "rare.csv"
    pd.concat([rows, rare]).to_csv(path, index=False)
    out = tmp_path / "run"
    done = _cli("compare", "--backbone", tiny_bert_dir, "--dataset", path, "--strategies", "head", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "3 stratified folds (so that each fold tests every class)" in " ".join((done.stdout + done.stderr).split())
    results = json.loads((out / "results.json").read_text())
    assert results["evaluation"]["folds"] == 3 and len(results["strategies"]["head"]["runs"]) == 3
