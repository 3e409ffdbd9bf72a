"""Two CPU processes under `accelerate launch` (DDP over gloo) give the results of one, up to float noise.

Each step's batch is split over the processes, so with dropout off (the only randomness that
legitimately differs) two processes take exactly the steps one takes. In accelerate 1.15
`--cpu --num_processes 2` starts one process unless given an MPI host file, so the processes are
started by `--multi_gpu` (torchrun) with ACCELERATE_USE_CPU, which makes accelerate use gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import tiny_bert
from transferlab.config import load_run_config
from transferlab.recipes.loading import load_model
from transferlab.recipes.train import train
from transferlab.settings import MIN_STEPS

OPTIONS = {"cv": 1, "n_train": 120, "n_test": 40, "max_length": 32}  # 120 examples (the 12 validating join training)


@pytest.fixture(scope="module")
def bert_without_dropout(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert-no-dropout"), dropout=0.0)


def _launch(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, "-m", "transferlab.cli", *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow  # 16 s; test_compare_with_the_head_strategy_on_two_processes keeps two processes in make test
def test_train_on_two_processes_matches_one(tmp_path, bert_without_dropout, sentiment_csv):
    settings = dict(backbone=str(bert_without_dropout), dataset=str(sentiment_csv), **OPTIONS)
    config = load_run_config(
        None, strategies=["full"], training={"epochs": 2, "batch_size": 12, "lr": 1e-3, "precision": "fp32"}, **settings
    )
    one, _ = train(config, tmp_path / "one", log=lambda _: None)

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items() if k != "cv"]
    done = _launch(
        "train", "--strategy", "full", "--epochs", "2", "--batch-size", "12", "--lr", "1e-3", *flags, "--out", str(tmp_path / "two")
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count(f"model: {tmp_path / 'two' / 'model'}") == 1  # only rank 0 reports

    record = json.loads((tmp_path / "two" / "results.json").read_text())
    assert record["status"] == "complete" and record["environment"]["processes"] == 2
    two = record["strategies"]["full"]
    # 108 examples and the 12 validating (too few to evaluate on: they join training) are 10 steps an epoch of 12;
    # 2 epochs are under the floor, so both runs take MIN_STEPS
    assert max(e["step"] for e in one.log_history if "step" in e) == MIN_STEPS
    for name, value in one.result["metrics"].items():
        assert two["metrics"][name]["mean"] == pytest.approx(value, abs=1e-4), name
    from transferlab.data.catalog import load_dataset
    from transferlab.data.splits import stratified_split

    test = stratified_split(load_dataset(str(sentiment_csv)), 120, 40, config.val_fraction, 0).part("test").inputs
    probs = load_model(tmp_path / "two" / "model").predict_proba(test)
    print(f"two processes vs one: largest probability difference {abs(probs - one.test_probs).max():.2e}")
    np.testing.assert_allclose(probs, one.test_probs, atol=1e-4, rtol=0)


def test_compare_with_the_head_strategy_on_two_processes(tmp_path, bert_without_dropout, sentiment_csv):
    """The head fits scikit-learn on cached features in every process: the same numbers, written once."""
    flags = [f"--backbone={bert_without_dropout}", f"--dataset={sentiment_csv}", "--n-train=120", "--n-test=40", "--cv=1"]
    done = _launch("compare", "--strategies", "head", *flags, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    config = load_run_config(None, backbone=str(bert_without_dropout), dataset=str(sentiment_csv), strategies=["head"], **OPTIONS)
    from transferlab.recipes.compare import compare

    one = compare(config, tmp_path / "one", log=lambda _: None)
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["environment"]["processes"] == 2 and one["environment"]["processes"] == 1
    for name, summary in one["strategies"]["head"]["metrics"].items():
        assert two["strategies"]["head"]["metrics"][name]["mean"] == pytest.approx(summary["mean"], abs=1e-6), name
