"""The command line end to end on a tiny model, and bad input: one line, exit code 2, nothing that looks complete."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "transferlab.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_compare_writes_the_documented_results(tmp_path, tiny_bert_dir, sentiment_csv):
    out = tmp_path / "run"
    done = _cli(
        "compare",
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
    assert (out / "report.html").read_text().count('<img alt="') == 2 and (out / "report.md").is_file()  # curves, confusion


@pytest.mark.parametrize(
    "make_input, args, message",
    [
        (lambda d: d / "nolabel.csv", [], "no column 'label'"),
        (lambda d: d / "empty.csv", [], "the file is empty"),
        (lambda d: d / "oneclass.csv", [], "single class"),
        (lambda d: d / "ok.csv", ["--backbone", "no-such-backbone"], "unknown backbone 'no-such-backbone'"),
        (lambda d: d / "ok.csv", ["--strategies", "lorra"], "did you mean 'lora'"),
        (lambda d: d / "ok.csv", ["--epochs", "-1"], "epochs must be positive"),
        (lambda d: d / "missing.csv", [], "no such file"),
    ],
)
def test_bad_input_fails_cleanly(tmp_path, make_input, args, message):
    (tmp_path / "nolabel.csv").write_text("text,target\ngood,1\nbad,0\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "oneclass.csv").write_text("text,label\ngood,1\nfine,1\n")
    (tmp_path / "ok.csv").write_text("text,label\ngood,1\nbad,0\n")
    out = tmp_path / "run"
    done = _cli("compare", "--dataset", make_input(tmp_path), "--out", out, *args)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "results.json").exists()
    assert not out.exists()


def test_predict_refuses_a_folder_that_is_not_a_model(tmp_path):
    done = _cli("predict", "--model", tmp_path, "--text", "hello")
    assert done.returncode == 2 and "not a model exported" in done.stderr
