"""The Python API in transferlab/__init__.py: the runs the command line makes, as objects."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

import transferlab
from transferlab.results import Results

from .conftest import sentiment_texts

README = Path(__file__).resolve().parents[1] / "README.md"


def test_import_is_light_and_versioned():
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", "import sys, transferlab; print(transferlab.__version__, 'torch' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    version, torch_loaded = done.stdout.split()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version) and torch_loaded == "False"


def test_compare_train_and_load_from_python(tmp_path, tiny_bert_dir):
    import pandas as pd

    texts, labels = sentiment_texts(160, seed=8)
    path = tmp_path / "d.csv"
    pd.DataFrame({"body": texts, "y": [["neg", "pos"][y] for y in labels]}).to_csv(path, index=False)
    common = dict(backbone=str(tiny_bert_dir), dataset=str(path), text_column="body", label_column="y", cv=1, n_test=40)
    results = transferlab.compare(strategies=["head", "lora"], out=tmp_path / "c", training={"epochs": 1}, **common)
    table = results.to_pandas()
    record = Results.read(tmp_path / "c").record
    assert list(table.index) == sorted(record["strategies"], key=lambda n: -record["strategies"][n]["metrics"]["accuracy"]["mean"])
    assert table.loc["head", "trainable_params"] == 2 * 32 + 2  # a linear head on 32 features, 2 classes
    assert table.loc["head", "accuracy"] == pytest.approx(record["strategies"]["head"]["metrics"]["accuracy"]["mean"])
    assert results.best == table.index[0] and results.data_checks["examples"] == 160
    trained = transferlab.train(strategy="head", out=tmp_path / "t", **common)
    model = transferlab.load(tmp_path / "t" / "model")
    probs = model.predict_proba(["the film was good", "a boring plot"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1)
    assert trained.record["model_dir"] == "model" and model.label_names == ["neg", "pos"]
    _keys_are_in_the_schema(record)
    _keys_are_in_the_schema(trained.record)


def _keys_are_in_the_schema(record: dict) -> None:
    """Every key a real run writes is declared in the results layer's types (results.json is documented there)."""
    from transferlab.results import ResultsRecord, RunResult, StrategySummary

    assert set(record) <= ResultsRecord.__annotations__.keys(), set(record) - ResultsRecord.__annotations__.keys()
    for summary in record["strategies"].values():
        assert set(summary) <= StrategySummary.__annotations__.keys(), set(summary) - StrategySummary.__annotations__.keys()
        for run in summary["runs"]:
            assert set(run) <= RunResult.__annotations__.keys(), set(run) - RunResult.__annotations__.keys()


@pytest.mark.integration
@pytest.mark.slow  # 50-75 s; the Python API's calls run in the fast suite on a tiny model (test_compare_train_and_load_from_python)
def test_the_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    """The Quick start's Python block, as written, on the packaged backbone and data."""
    block = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "accuracy" in out and "['negative', 'positive']" in out
    assert (tmp_path / "runs" / "quickstart" / "results.json").is_file()
