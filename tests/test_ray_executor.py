"""`compare --executor ray` dispatches the strategy x fold x seed runs to Ray and writes the sequential results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("ray")

from transferlab.config import load_run_config  # noqa: E402
from transferlab.errors import UserError  # noqa: E402
from transferlab.recipes.compare import compare  # noqa: E402
from transferlab.recipes.executors import make_executor  # noqa: E402

PER_RUN = ("fold", "seed", "metrics", "confusion_matrix")


@pytest.mark.slow  # 33 s: starts a local Ray cluster
def test_ray_runs_give_the_sequential_results(tmp_path, tiny_bert_dir, sentiment_csv):
    options = ["--strategies", "head,lora", "--cv", "2", "--seeds", "2", "--n-train", "120", "--epochs", "1", "--batch-size", "8"]
    options += ["--backbone", str(tiny_bert_dir), "--dataset", str(sentiment_csv), "--max-length", "32"]
    command = [sys.executable, "-m", "transferlab.cli", "compare", *options, "--executor", "ray", "--ray-cpus", "2"]
    done = subprocess.run([*command, "--out", str(tmp_path / "ray")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    on_ray = json.loads((tmp_path / "ray" / "results.json").read_text())

    config = load_run_config(
        None,
        backbone=str(tiny_bert_dir),
        dataset=str(sentiment_csv),
        strategies=["head", "lora"],
        cv=2,
        seeds=2,
        n_train=120,
        max_length=32,
        training={"epochs": 1, "batch_size": 8},
    )
    in_turn = compare(config, tmp_path / "sequential", log=lambda _: None)
    assert on_ray["status"] == in_turn["status"] == "complete"
    for name in ("head", "lora"):
        ray_runs, sequential_runs = on_ray["strategies"][name]["runs"], in_turn["strategies"][name]["runs"]
        assert [(r["fold"], r["seed"]) for r in ray_runs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        for got, expected in zip(ray_runs, sequential_runs):
            assert {k: got[k] for k in ("fold", "seed", "confusion_matrix")} == {
                k: expected[k] for k in ("fold", "seed", "confusion_matrix")
            }
            assert got["metrics"] == pytest.approx(expected["metrics"], abs=1e-6)
    assert on_ray["comparison"] == in_turn["comparison"]
    assert sorted(p.name for p in (tmp_path / "ray" / "strategies" / "lora").iterdir()) == sorted(
        f"{kind}-fold{f}-seed{s}.{ext}" for kind, ext in (("log", "jsonl"), ("result", "json")) for f in (1, 2) for s in (0, 1)
    )


def test_executor_options_are_checked():
    with pytest.raises(UserError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(UserError, match="apply to --executor ray"):
        make_executor("sequential", num_cpus=2)


@pytest.mark.slow  # about a minute: starts a local Ray cluster, then the same search in this process
def test_auto_on_ray_workers_runs_the_same_trials(tmp_path, tiny_bert_dir, sentiment_csv):
    """Two Ray workers train the search's trials side by side: every first look (each strategy at its defaults) scores
    on validation what it scores when trained here, the winner is the best complete trial, and it is tested and
    exported as usual."""
    from transferlab.recipes.auto import auto

    options = [
        "--strategies",
        "head,lora,full",
        "--n-train",
        "160",
        "--n-test",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--max-length",
        "32",
    ]
    options += ["--backbone", str(tiny_bert_dir), "--dataset", str(sentiment_csv), "--budget", "20m", "--max-trials", "3"]
    command = [sys.executable, "-m", "transferlab.cli", "auto", *options, "--executor", "ray", "--ray-cpus", "2"]
    done = subprocess.run([*command, "--out", str(tmp_path / "ray")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    on_ray = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert "trial 0: head" in done.stdout + done.stderr  # the workers' trials are logged by the driver

    config = load_run_config(
        None,
        backbone=str(tiny_bert_dir),
        dataset=str(sentiment_csv),
        strategies=["head", "lora", "full"],
        n_train=160,
        n_test=32,
        max_length=32,
        training={"epochs": 2, "batch_size": 16},
    )
    here = auto(config, tmp_path / "here", budget_seconds=1200, max_trials=3, log=lambda _: None)

    def first_looks(record):
        return {t["strategy"]: t["validation"] for t in record["search"]["trials"] if t["trial"] < 3 and t["state"] == "complete"}

    assert first_looks(on_ray) == pytest.approx(first_looks(here), abs=1e-6) and len(first_looks(here)) == 3
    complete = [t for t in on_ray["search"]["trials"] if t["state"] == "complete"]
    winner = on_ray["search"]["winner"]
    assert winner["validation"] == max(t["validation"] for t in complete)
    assert (tmp_path / "ray" / "model" / "transferlab.json").is_file()
    if winner["strategy"] == here["search"]["winner"]["strategy"]:  # the same winner, refitted on the driver: the same test
        assert on_ray["strategies"][winner["strategy"]]["metrics"]["accuracy"]["mean"] == pytest.approx(
            here["strategies"][winner["strategy"]]["metrics"]["accuracy"]["mean"]
        )
