"""The command line end to end on a tiny model (bad input: tests/test_bad_input.py)."""

from __future__ import annotations

import json
import subprocess
import sys


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
