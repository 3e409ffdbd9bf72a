"""ONNX export: the graph reproduces the model, and docs/deploy.md's script runs it without torch or transferlab."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from transferlab.config import load_run_config
from transferlab.errors import UserError
from transferlab.recipes.onnx_export import export_onnx
from transferlab.recipes.predict import load_model
from transferlab.recipes.train import train

DEPLOY = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
TEXTS = ["the film was good", "a dull and boring plot", "the actors were superb but the story was terrible and very dull"]
# Run first in the deployment process: importing any of these fails there.
BLOCKER = """import sys
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "transferlab"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, _Refuse())
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir) -> dict[str, Path]:
    import pandas as pd

    from tests.conftest import sentiment_texts

    root = tmp_path_factory.mktemp("onnx")
    texts, labels = sentiment_texts(160)
    pd.DataFrame({"text": texts, "label": ["pos" if y else "neg" for y in labels]}).to_csv(root / "d.csv", index=False)
    runs = {}
    for strategy, keep in (("full", False), ("lora", True), ("prompt", True)):
        config = load_run_config(
            None, backbone=str(tiny_bert_dir), dataset=str(root / "d.csv"), strategies=[strategy], cv=1, n_train=120, n_test=40,
            max_length=32, label_issues=False, training={"epochs": 1, "batch_size": 8, "min_steps": 8},
        )  # fmt: skip
        train(config, root / strategy, keep_adapter=keep, log=lambda _: None)
        runs[strategy] = root / strategy / "model"
    return runs


def test_the_deploy_script_runs_without_torch_and_matches_predict(trained, tmp_path):
    folder = export_onnx(trained["full"], "onnx", tmp_path / "onnx").parent
    script = re.search(r"```python\n(.*?)```", DEPLOY.read_text(encoding="utf-8"), re.S).group(1)
    blocked = subprocess.run([sys.executable, "-c", BLOCKER + "import torch"], capture_output=True, text=True)
    assert blocked.returncode != 0 and "not installed here" in blocked.stderr  # the blocker works
    done = subprocess.run([sys.executable, "-c", BLOCKER + script, str(folder), *TEXTS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    loaded = load_model(trained["full"])
    expected = loaded.predict_proba(TEXTS)
    np.testing.assert_allclose(np.array([r["probabilities"] for r in rows]), expected, atol=1e-4, rtol=0)
    assert [r["label"] for r in rows] == [loaded.label_names[i] for i in expected.argmax(1)]


def _run_graph(graph: Path, texts: list[str]) -> np.ndarray:
    import onnxruntime

    from transferlab.backbones import load_preprocessor, resolve_backbone

    manifest = json.loads((graph.parent / "transferlab.json").read_text())
    preprocessor = load_preprocessor(resolve_backbone(manifest["backbone"]), max_length=manifest["max_length"])
    batch = preprocessor.collate(preprocessor.encode(texts))
    return onnxruntime.InferenceSession(str(graph)).run(None, {name: batch[name].numpy() for name in manifest["onnx_inputs"]})[0]


def test_a_kept_adapter_exports_merged(trained, tmp_path):
    graph = export_onnx(trained["lora"], "onnx", tmp_path / "lora")
    np.testing.assert_allclose(_run_graph(graph, TEXTS), load_model(trained["lora"]).predict_proba(TEXTS), atol=1e-4, rtol=0)
    assert json.loads((graph.parent / "transferlab.json").read_text())["format"] == "onnx" and (graph.parent / "README.md").is_file()


def test_int8_is_smaller_and_keeps_the_labels(trained, tmp_path):
    fp32, int8 = (export_onnx(trained["full"], fmt, tmp_path / fmt) for fmt in ("onnx", "onnx-int8"))
    assert int8.stat().st_size < fp32.stat().st_size
    texts = [*TEXTS, "good", "bad", "the plot was lovely", "an awful film"]
    exact, quantised = _run_graph(fp32, texts), _run_graph(int8, texts)
    np.testing.assert_allclose(quantised.sum(1), 1, atol=1e-5)
    assert (exact.argmax(1) == quantised.argmax(1)).all() and np.abs(exact - quantised).max() < 0.1


def test_virtual_tokens_cannot_be_exported(trained, tmp_path):
    with pytest.raises(UserError, match="cannot be merged"):
        export_onnx(trained["prompt"], "onnx", tmp_path / "prompt")
    with pytest.raises(UserError, match="unknown export format 'tflite'"):
        export_onnx(trained["full"], "tflite", tmp_path / "x")
