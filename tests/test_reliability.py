"""Interrupted runs resume to identical metrics, a diverging strategy does not sink a comparison, and the
same seed gives the same numbers in another process. The runs are real CLI processes on a tiny model."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import sentiment_texts, tiny_bert
from transferlab.errors import TrainingDiverged, UserError
from transferlab.recipes.run_folder import RunFolder
from transferlab.training.divergence import DivergenceGuard


def _cli(*args, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRANSFERLAB_KILL_AT"}
    if kill_at:
        env["TRANSFERLAB_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "transferlab.cli", *map(str, args)], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("reliability")
    texts, labels = sentiment_texts(240)
    pd.DataFrame({"text": texts, "label": ["positive" if y else "negative" for y in labels]}).to_csv(base / "data.csv", index=False)
    return {"base": base, "backbone": tiny_bert(base / "tiny-bert"), "data": base / "data.csv"}


def _compare(setup, out: Path, *extra, kill_at: str | None = None) -> subprocess.CompletedProcess:
    # head has no training steps, so lora is the second strategy to train: 108 examples and the 12 validating (too
    # few to pick checkpoints: they join training) are 8 steps an epoch, 16 in 2 epochs, under the floor of 100
    # optimizer steps; a checkpoint every 25 (the 4 evaluations the epochs would have had).
    return _cli(
        "compare",
        "--backbone",
        setup["backbone"],
        "--dataset",
        setup["data"],
        "--strategies",
        "head,lora,full",
        "--n-train",
        120,
        "--n-test",
        40,
        "--cv",
        1,
        "--epochs",
        2,
        "--out",
        out,
        *extra,
        kill_at=kill_at,
    )


def _metrics(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete"
    return {name: r["metrics"] for name, r in results["strategies"].items()}


@pytest.fixture(scope="module")
def uninterrupted(setup) -> dict:
    done = _compare(setup, setup["base"] / "uninterrupted")
    assert done.returncode == 0, done.stderr
    metrics = _metrics(setup["base"] / "uninterrupted")
    assert set(metrics) == {"head", "lora", "full"}
    return metrics


@pytest.mark.parametrize(
    "kill_at, finished_before",
    [
        pytest.param("encoded", 0, marks=pytest.mark.slow),  # the data is tokenised, nothing is written yet
        ("train-step@30", 1),  # mid-run in the second strategy, after its first checkpoint
        pytest.param("write:results.json", 3, marks=pytest.mark.slow),  # everything trained, results.json half-written
    ],
)
def test_a_run_killed_at_any_point_resumes_to_identical_metrics(setup, uninterrupted, kill_at, finished_before):
    out = setup["base"] / f"killed-{kill_at.replace(':', '-').replace('@', '-')}"
    killed = _compare(setup, out, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "results.json").exists()
    if kill_at.startswith("train-step"):
        assert (out / "strategies" / "lora" / "fold1-seed0" / "checkpoints" / "checkpoint-25").is_dir()
        assert not (out / "strategies" / "lora" / "result-fold1-seed0.json").exists()
    finished = sorted(out.glob("strategies/*/result-*.json"))
    stamps = {path: path.stat().st_mtime_ns for path in finished}
    assert len(finished) == finished_before

    resumed = _compare(setup, out)
    assert resumed.returncode == 0, resumed.stderr
    if finished_before:
        assert f"{finished_before} of 3 runs finished before" in resumed.stderr
    assert {path: path.stat().st_mtime_ns for path in finished} == stamps, "a finished run was run again"
    assert _metrics(out) == uninterrupted
    assert not list(out.rglob("checkpoints")) and not list(out.rglob(".*.tmp"))


def test_two_processes_with_the_same_seed_give_identical_metrics(setup, uninterrupted):
    out = setup["base"] / "again"
    assert _compare(setup, out).returncode == 0
    assert _metrics(out) == uninterrupted


def test_a_diverging_strategy_is_reported_and_the_others_finish(setup, tmp_path):
    config = tmp_path / "diverge.yaml"
    config.write_text("strategy_settings:\n  full: {lr: 30.0}\n")
    done = _compare(setup, tmp_path / "run", "--epochs", 3, "--config", config)
    assert done.returncode == 1, done.stderr
    assert "1 strategy did not finish: full" in done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "complete"
    assert results["strategies"]["full"]["status"] == "diverged"
    assert "learning rate is too high" in results["strategies"]["full"]["reason"]
    for name in ("head", "lora"):
        assert results["strategies"][name]["status"] == "ok"
    assert results["comparison"]["best"] in ("head", "lora")


def test_divergence_guard_stops_on_a_non_finite_loss_or_a_sustained_rise():
    guard = DivergenceGuard(factor=4, patience=3)
    for loss in (0.7, 3.0, 2.9, 0.6, 2.9, 2.9):  # never 3 steps in a row above 2.8
        guard.check(loss, 1)
    with pytest.raises(TrainingDiverged, match="for 3 steps"):
        guard.check(3.0, 7)
    with pytest.raises(TrainingDiverged, match="nan"):
        DivergenceGuard().check(float("nan"), 1)


def test_a_run_that_starts_near_zero_loss_is_stopped_only_past_a_uniform_guess():
    """Fine-tuning after a linear probe starts near zero: batches a few times harder than the first are not a
    divergence, a loss worse than guessing (ln 2 for two classes) held for the patience is."""
    guard = DivergenceGuard(factor=4, patience=3, floor=math.log(2))
    for loss in (0.01, 0.05, 0.2, 0.6, 0.3, 0.65, 0.68):  # all above 4 x 0.01, none above 0.693
        guard.check(loss, 1)
    for loss in (0.8, 1.2):
        guard.check(loss, 2)
    with pytest.raises(TrainingDiverged, match=r"4x its start \(0.010\) and a uniform guess's 0.693 for 3 steps"):
        guard.check(2.0, 3)


def test_a_run_folder_refuses_another_config_and_a_restart_keeps_the_users_files(tmp_path):
    folder = RunFolder(tmp_path)
    folder.open({"backbone": "a", "training": {"lr": 1e-3}}, None, log=lambda m: None)
    folder.save_run("lora", 0, 0, {"status": "ok"}, [])
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match=r"training.lr: 0.001 -> 0.01"):
        folder.open({"backbone": "a", "training": {"lr": 1e-2}}, None, log=lambda m: None)
    assert folder.finished_result("lora", 0, 0) == {"status": "ok"}
    folder.open({"backbone": "a", "training": {"lr": 1e-2}}, False, log=lambda m: None)
    assert folder.finished_result("lora", 0, 0) is None
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_unfinished_run_is_not_resumed_over_changed_files(tmp_path):
    folder = RunFolder(tmp_path)
    config = {"backbone": "a", "dataset": "d.csv"}
    folder.open(config, None, lambda m: None, {"dataset": {"d.csv": "aa"}, "backbone": {"w": "bb"}})
    folder.save_run("lora", 0, 0, {"status": "ok"}, [])
    folder.open(config, None, lambda m: None, {"dataset": {"d.csv": "aa"}, "backbone": {"w": "bb"}})  # the same files: resumed
    assert folder.finished_result("lora", 0, 0) == {"status": "ok"}
    with pytest.raises(UserError, match=r"read other contents of dataset; pass --restart"):
        folder.open(config, None, lambda m: None, {"dataset": {"d.csv": "ac"}, "backbone": {"w": "bb"}})
    assert folder.finished_result("lora", 0, 0) == {"status": "ok"}  # nothing lost
    folder.open(config, False, lambda m: None, {"dataset": {"d.csv": "ac"}, "backbone": {"w": "bb"}})
    assert folder.finished_result("lora", 0, 0) is None


def test_an_unfinished_run_is_resumed_only_by_the_command_that_started_it(tmp_path):
    """compare's and auto's runs of one config are different runs: one does not carry on from the other's results."""
    folder = RunFolder(tmp_path)
    config, files = {"backbone": "a", "dataset": "d.csv"}, {"dataset": {"d.csv": "aa"}}
    folder.open(config, None, lambda m: None, files, "compare")
    folder.save_run("lora", 0, 0, {"status": "ok"}, [])
    with pytest.raises(UserError, match="holds an unfinished run of 'compare', not 'auto'"):
        folder.open(config, None, lambda m: None, files, "auto")
    folder.open(config, None, lambda m: None, files, "compare")
    assert folder.finished_result("lora", 0, 0) == {"status": "ok"}
    folder.open(config, False, lambda m: None, files, "auto")  # --restart
    assert folder.finished_result("lora", 0, 0) is None


def test_the_run_folder_records_the_hashes_of_the_files_it_read(setup, tmp_path):
    """Through `prepare`: a data file edited in place (same path, same config) is told apart on resume."""
    from transferlab.config import load_run_config
    from transferlab.recipes.experiment import open_run_folder, prepare

    data = tmp_path / "data.csv"
    shutil.copy(setup["data"], data)
    config = lambda: load_run_config(None, backbone=str(setup["backbone"]), dataset=str(data), strategies=["head"], cv=1)  # noqa: E731
    first = config()
    open_run_folder(tmp_path / "run", first, None, lambda m: None, prepare(first, lambda m: None), "compare")
    recorded = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert recorded["dataset"] == {data.name: hashlib.sha256(data.read_bytes()).hexdigest()}
    frame = pd.read_csv(data)
    frame.loc[0, "label"] = "negative" if frame.loc[0, "label"] == "positive" else "positive"  # one label corrected
    frame.to_csv(data, index=False)
    again = config()
    with pytest.raises(UserError, match="read other contents of dataset"):
        open_run_folder(tmp_path / "run", again, None, lambda m: None, prepare(again, lambda m: None), "compare")


def test_weights_load_safely():
    """Pickled weights only through `weights_only=True`, and no model code from a hub unless the user asks."""
    import re

    source = "\n".join(p.read_text() for p in (Path(__file__).parents[1] / "src" / "transferlab").rglob("*.py"))
    loads = re.findall(r"torch\.load\(([^)]*)\)", source)
    assert loads and all("weights_only=True" in call for call in loads)
    assert "trust_remote_code=True" not in source


def test_a_checkpoint_cut_short_by_a_kill_is_skipped(tmp_path):
    """The Trainer writes trainer_state.json last: a checkpoint without it was interrupted mid-save."""
    from transferlab.training.checkpoints import last_complete_checkpoint

    for step, complete in ((3, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
    assert not (tmp_path / "checkpoint-6").exists()
    assert last_complete_checkpoint(tmp_path / "none") is None


def test_a_resumed_run_tries_its_failed_runs_again_and_keeps_the_others(tmp_path):
    """A failure is an exception (a full disk, a device fault): a resume runs it again. Skipped and diverged runs are
    results of the config, and a resume reads them back."""
    folder = RunFolder(tmp_path)
    folder.open({"backbone": "a"}, None, log=lambda m: None)
    for seed, status in enumerate(("ok", "failed", "diverged", "skipped")):
        folder.save_run("lora", 0, seed, {"status": status}, [])
    folder.open({"backbone": "a"}, None, log=lambda m: None)
    assert [folder.finished_result("lora", 0, seed) for seed in range(4)] == [
        {"status": "ok"}, None, {"status": "diverged"}, {"status": "skipped"},
    ]  # fmt: skip
