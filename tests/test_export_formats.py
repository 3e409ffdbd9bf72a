"""Every export format reproduces the model it came from and runs without what its users leave out: ONNX without torch or
transferlab (docs/deploy.md's scripts, predict and serve on onnxruntime), sentence-transformers without transferlab."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from transferlab.config import load_run_config
from transferlab.deploy import ONNX_FILE
from transferlab.errors import UserError
from transferlab.evaluation.metrics import predicted_labels
from transferlab.recipes.export import export_model
from transferlab.recipes.loading import load_model
from transferlab.recipes.train import train

from .conftest import run_without

DEPLOY = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
TEXTS = ["the film was good", "a dull and boring plot", "the actors were superb but the story was terrible and very dull"]
# What the deployment process lacks: importing any of these fails there.
NOT_DEPLOYED = ("torch", "transformers", "transferlab")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir) -> dict[str, Path]:
    import pandas as pd

    from tests.conftest import sentiment_texts

    root = tmp_path_factory.mktemp("onnx")
    texts, labels = sentiment_texts(160)
    pd.DataFrame({"text": texts, "label": ["pos" if y else "neg" for y in labels]}).to_csv(root / "d.csv", index=False)
    runs = {}
    for strategy, keep, settings in (
        ("full", False, {}), ("lora", True, {}), ("prompt", True, {}), ("head", False, {"layers": "second_to_last"}),
        ("houlsby", False, {}), ("setfit", False, {"pair_iterations": 1}),
    ):  # fmt: skip
        config = load_run_config(
            None, backbone=str(tiny_bert_dir), dataset=str(root / "d.csv"), strategies=[strategy], cv=1, n_train=120, n_test=40,
            max_length=32, label_issues=False, training={"epochs": 1, "batch_size": 8, "min_steps": 8},
            strategy_settings={strategy: settings},
        )  # fmt: skip
        train(config, root / strategy, keep_adapter=keep, log=lambda _: None)
        runs[strategy] = root / strategy / "model"
    return runs


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory, tiny_cnn_dir) -> Path:
    """The tiny CNN fine-tuned on grey images whose brighter half is the label, as `train` exports it."""
    from PIL import Image

    from .conftest import bright_side_images

    root = tmp_path_factory.mktemp("onnx-cnn")
    for i, (image, label) in enumerate(zip(*bright_side_images(48))):
        (root / "images" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / str(label) / f"{i}.png")
    config = load_run_config(
        None, backbone=str(tiny_cnn_dir), dataset=str(root / "images"), strategies=["full"], cv=1, n_train=36, n_test=12,
        image_size=32, label_issues=False, training={"epochs": 1, "batch_size": 8, "min_steps": 4},
    )  # fmt: skip
    train(config, root / "run", keep_adapter=False, log=lambda _: None)
    return root / "run" / "model"


def test_a_kept_cnn_adapter_predicts_with_the_batch_norm_statistics_it_trained_with(tiny_cnn_dir, tmp_path):
    """Training moves a CNN's BatchNorm running statistics in its frozen body; the adapter folder keeps them."""
    from transferlab.backbones import build_classifier, load_preprocessor, resolve_backbone
    from transferlab.recipes.loading import BATCH_NORM_FILE, batch_norm_statistics
    from transferlab.training.inference import predict_proba

    from .conftest import bright_side_image_folder, bright_side_images

    images = bright_side_images(48)[0]
    config = load_run_config(
        None, backbone=str(tiny_cnn_dir), dataset=str(bright_side_image_folder(tmp_path / "images", 48)), strategies=["lora"],
        cv=1, n_train=36, n_test=12, image_size=32, label_issues=False, training={"epochs": 1, "batch_size": 8, "min_steps": 6},
    )  # fmt: skip
    run, _ = train(config, tmp_path / "run", keep_adapter=True, log=lambda _: None)
    folder = tmp_path / "run" / "model"
    assert json.loads((folder / "transferlab.json").read_text())["format"] == "peft-adapter" and (folder / BATCH_NORM_FILE).is_file()
    pretrained = batch_norm_statistics(build_classifier(resolve_backbone(str(tiny_cnn_dir)), ["0", "1"]))
    trained = {name.removeprefix("base_model.model."): value for name, value in batch_norm_statistics(run.model).items()}
    assert any(not torch.equal(pretrained[name], trained[name]) for name in pretrained if name.endswith("running_var"))
    pre = load_preprocessor(resolve_backbone(str(tiny_cnn_dir)), image_size=32, augment=[])
    expected = predict_proba(run.model, pre.encode(images[:12]), pre.collate, pre.length_of)
    np.testing.assert_allclose(load_model(folder).predict_proba(images[:12]), expected, atol=1e-5, rtol=0)


def _deploy_script(number: int) -> str:
    return re.findall(r"```python\n(.*?)```", DEPLOY.read_text(encoding="utf-8"), re.S)[number]


def test_the_deploy_script_runs_without_torch_and_matches_predict(trained, tmp_path):
    folder = export_model(trained["full"], "onnx", tmp_path / "onnx")
    blocked = run_without(NOT_DEPLOYED, "import torch")
    assert blocked.returncode != 0 and "not installed here" in blocked.stderr  # the blocker works
    done = run_without(NOT_DEPLOYED, _deploy_script(0), str(folder), *TEXTS)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    loaded = load_model(trained["full"])
    expected = loaded.predict_proba(TEXTS)
    np.testing.assert_allclose(np.array([r["probabilities"] for r in rows]), expected, atol=1e-4, rtol=0)
    assert [r["label"] for r in rows] == [loaded.label_names[i] for i in predicted_labels(expected, loaded.threshold)]


def test_the_image_deploy_script_runs_with_pillow_alone_and_matches_predict(trained_cnn, tmp_path):
    from PIL import Image

    from .conftest import bright_side_images

    folder = export_model(trained_cnn, "onnx", tmp_path / "onnx")
    paths = []
    for i, (image, size) in enumerate(zip(bright_side_images(4, seed=5)[0], ((32, 32), (45, 30), (30, 61), (100, 100)))):
        paths.append(str(tmp_path / f"{i}.png"))  # wide, tall and large: the resize and the crop's rounding matter
        Image.fromarray(image).resize(size).save(paths[-1])
    done = run_without(NOT_DEPLOYED, _deploy_script(1), str(folder), *paths)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    expected = load_model(trained_cnn).predict_proba(paths)
    np.testing.assert_allclose(np.array([r["probabilities"] for r in rows]), expected, atol=1e-4, rtol=0)


def _run_graph(graph: Path, texts: list[str]) -> np.ndarray:
    import onnxruntime

    from transferlab.backbones import load_preprocessor, resolve_backbone

    manifest = json.loads((graph.parent / "transferlab.json").read_text())
    preprocessor = load_preprocessor(resolve_backbone(manifest["backbone"]), max_length=manifest["max_length"])
    batch = preprocessor.collate(preprocessor.encode(texts))
    return onnxruntime.InferenceSession(str(graph)).run(None, {name: batch[name].numpy() for name in manifest["onnx_inputs"]})[0]


def test_a_kept_adapter_exports_merged(trained, tmp_path):
    graph = export_model(trained["lora"], "onnx", tmp_path / "lora") / ONNX_FILE
    np.testing.assert_allclose(_run_graph(graph, TEXTS), load_model(trained["lora"]).predict_proba(TEXTS), atol=1e-4, rtol=0)
    assert json.loads((graph.parent / "transferlab.json").read_text())["format"] == "onnx" and (graph.parent / "README.md").is_file()


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_deployed_tokenizer_cuts_long_texts_on_the_side_transformers_does(trained, tmp_path, side):
    from transformers import AutoTokenizer

    from transferlab.deploy import _TextInputs

    folder = tmp_path / "model"
    shutil.copytree(trained["full"], folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "truncation_side": side}))
    text = " ".join(f"word{i}" for i in range(40))
    expected = AutoTokenizer.from_pretrained(folder)(text, truncation=True, max_length=12)["input_ids"]
    assert _TextInputs(folder, 12)([text])["input_ids"][0].tolist() == expected


def test_int8_is_smaller_and_keeps_the_labels(trained, tmp_path):
    fp32, int8 = (export_model(trained["full"], fmt, tmp_path / fmt) / ONNX_FILE for fmt in ("onnx", "onnx-int8"))
    assert int8.stat().st_size < fp32.stat().st_size
    texts = [*TEXTS, "good", "bad", "the plot was lovely", "an awful film"]
    exact, quantised = _run_graph(fp32, texts), _run_graph(int8, texts)
    np.testing.assert_allclose(quantised.sum(1), 1, atol=1e-5)
    assert (exact.argmax(1) == quantised.argmax(1)).all() and np.abs(exact - quantised).max() < 0.1


def test_int8_is_refused_for_a_cnn_and_where_onnxruntime_cannot_run_the_graph(trained, trained_cnn, tmp_path, monkeypatch):
    """A CNN's activations need calibration that dynamic quantisation does not do: its int8 export is refused. Where
    onnxruntime cannot run a quantised graph, the export says so in one line and publishes nothing."""
    from transferlab.recipes import onnx_export

    with pytest.raises(UserError, match="export an image model as onnx"):
        export_model(trained_cnn, "onnx-int8", tmp_path / "cnn")
    assert not (tmp_path / "cnn").exists()

    def no_int8_kernel(graph, batch):
        if graph.name == "int8.onnx":
            raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for MatMulInteger(10)")
        return run_graph(graph, batch)

    run_graph = onnx_export._run_graph
    monkeypatch.setattr(onnx_export, "_run_graph", no_int8_kernel)
    with pytest.raises(UserError, match=r"cannot run the int8 graph \(\[ONNXRuntimeError\] : 9 : NOT_IMPLEMENTED"):
        export_model(trained["full"], "onnx-int8", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_virtual_tokens_cannot_be_exported(trained, tmp_path):
    with pytest.raises(UserError, match="cannot be merged"):
        export_model(trained["prompt"], "onnx", tmp_path / "prompt")
    with pytest.raises(UserError, match="unknown export format 'tflite'"):
        export_model(trained["full"], "tflite", tmp_path / "x")


# The onnxruntime backend of predict and serve: transferlab without torch or transformers.
NO_TORCH = ("torch", "transformers", "peft", "torchvision", "timm", "accelerate")
CLI = "import sys\nfrom transferlab.cli import main\nsys.argv = ['transferlab', *sys.argv[1:]]\nmain()\n"


def test_predict_on_onnxruntime_imports_no_torch_and_matches_torch_predict(trained, trained_cnn, tmp_path):
    import pandas as pd

    text_export = export_model(trained["full"], "onnx", tmp_path / "text")
    table = tmp_path / "texts.csv"
    labels = ["pos", "neg", "neg"]
    pd.DataFrame({"review": TEXTS, "label": labels}).to_csv(table, index=False)
    done = run_without(
        NO_TORCH, CLI, "predict", "--backend", "onnxruntime", "--model", str(text_export), "--input", str(table),
        "--text-column", "review", "--label-column", "label", "--output", str(tmp_path / "p.jsonl"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    loaded = load_model(trained["full"])
    expected = loaded.predict_proba(TEXTS)
    got = np.array([[row[f"p_{name}"] for name in loaded.label_names] for row in rows])
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert [row["true_label"] for row in rows] == labels and "on 3 labelled examples: accuracy" in done.stdout + done.stderr

    image_export = export_model(trained_cnn, "onnx", tmp_path / "image")
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    from PIL import Image

    from .conftest import bright_side_images

    for i, image in enumerate(bright_side_images(3, size=40, seed=9)[0]):
        Image.fromarray(image).save(image_dir / f"{i}.png")
    done = run_without(
        NO_TORCH, CLI, "predict", "--model", str(image_export), "--image", str(image_dir),  # auto: the folder holds a graph
        "--output", str(tmp_path / "i.csv"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(tmp_path / "i.csv")
    expected = load_model(trained_cnn).predict_proba(frame["image"].tolist())
    np.testing.assert_allclose(frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy(), expected, atol=1e-4, rtol=0)


def test_serve_on_onnxruntime_imports_no_torch_and_answers_like_predict(trained, tmp_path):
    fp32 = export_model(trained["full"], "onnx", tmp_path / "fp32")
    int8 = export_model(trained["lora"], "onnx-int8", tmp_path / "int8")
    client = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from transferlab.serve.app import create_app\n"
        "from transferlab.serve.onnx_tasks import OnnxTasks\n"
        "from transferlab.serve.task_folders import parse_task_folders\n"
        "app = create_app(OnnxTasks(parse_task_folders(sys.argv[1:3], '--model')))\n"
        "with TestClient(app) as http:\n"
        "    tasks = http.get('/v1/tasks').json()\n"
        f"    answers = [http.post('/v1/predict', json={{'task': t['name'], 'inputs': {TEXTS!r}}}).json() for t in tasks]\n"
        "print(json.dumps({'tasks': tasks, 'answers': answers}))\n"
    )
    done = run_without(NO_TORCH, client, f"sentiment={fp32}", f"compact={int8}")
    assert done.returncode == 0, done.stderr
    served = json.loads(done.stdout.splitlines()[-1])
    assert [t["name"] for t in served["tasks"]] == ["sentiment", "compact"] and served["tasks"][1]["strategy"] == "lora"
    loaded = load_model(trained["full"])
    got = np.array([[p["probabilities"][name] for name in loaded.label_names] for p in served["answers"][0]["predictions"]])
    np.testing.assert_allclose(got, loaded.predict_proba(TEXTS), atol=1e-4, rtol=0)


def test_the_onnxruntime_backend_refuses_what_it_cannot_run(trained, trained_cnn, tmp_path):
    from transferlab.deploy import OnnxClassifier
    from transferlab.serve.onnx_tasks import OnnxTasks

    with pytest.raises(UserError, match="not a folder written by 'transferlab export'"):
        OnnxClassifier(trained["full"])  # a train folder: safetensors, no graph
    with pytest.raises(UserError, match="an export in the onnx format, not a model torch loads"):
        load_model(export_model(trained["full"], "onnx", tmp_path / "graph"))
    with pytest.raises(UserError, match="an image classifier; serve answers texts"):
        OnnxTasks({"shapes": export_model(trained_cnn, "onnx", tmp_path / "cnn")})
    done = run_without(NO_TORCH, CLI, "serve", "--backend", "onnxruntime", "--adapter", f"a={trained['lora']}")
    assert done.returncode == 2 and "give --model NAME=DIR" in done.stderr and "Traceback" not in done.stderr
    done = run_without(NO_TORCH, CLI, "predict", "--backend", "tensorrt", "--model", str(trained["full"]), "--text", "good")
    assert done.returncode == 2 and "unknown backend 'tensorrt'" in done.stderr


# sentence-transformers: the embeddings and the classifier in one folder that loads without transferlab.
ST_ENCODE = (
    "import json, sys\n"
    "from sentence_transformers import SentenceTransformer\n"
    "model = SentenceTransformer(sys.argv[1], device='cpu')\n"
    "embeddings = SentenceTransformer(modules=list(model)[:-1], device='cpu').encode(sys.argv[2:])\n"  # docs/deploy.md: without the Dense
    "print(json.dumps({'logits': model.encode(sys.argv[2:]).tolist(), 'embeddings': embeddings.tolist()}))\n"
)


def _logits(model_dir: Path, texts: list[str]) -> np.ndarray:
    loaded = load_model(model_dir)
    batch = loaded.preprocessor.collate(loaded.preprocessor.encode(texts))
    with torch.no_grad():
        return loaded.model(**{k: v for k, v in batch.items() if k != "labels"}).logits.numpy()


@pytest.mark.parametrize(  # merged; a kept adapter; the head on the layer below the last; features of unit length
    "strategy", [pytest.param("full", marks=pytest.mark.slow), pytest.param("lora", marks=pytest.mark.slow), "head", "setfit"]
)
def test_sentence_transformers_export_gives_the_logits_without_transferlab(strategy, trained, tmp_path):
    folder = export_model(trained[strategy], "sentence-transformers", tmp_path / "st")
    done = run_without(("transferlab",), ST_ENCODE, str(folder), *TEXTS)
    assert done.returncode == 0, done.stderr
    encoded = json.loads(done.stdout.splitlines()[-1])
    np.testing.assert_allclose(np.array(encoded["logits"]), _logits(trained[strategy], TEXTS), atol=1e-5, rtol=0)
    model = load_model(trained[strategy]).merged("test")
    head, temperature = model.classifier, model.config.calibration_temperature
    by_hand = (np.array(encoded["embeddings"]) @ head.weight.numpy().T + head.bias.numpy()) / temperature
    np.testing.assert_allclose(by_hand, _logits(trained[strategy], TEXTS), atol=1e-5, rtol=0)
    meta = yaml.safe_load((folder / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    assert (
        meta["library_name"] == "sentence-transformers" and "encode(texts)` returns the class logits" in (folder / "README.md").read_text()
    )
    assert json.loads((folder / "transferlab.json").read_text())["format"] == "sentence-transformers"


def test_what_sentence_transformers_cannot_hold_is_refused_and_nothing_is_written(trained, trained_cnn, tmp_path):
    for model_dir, reason in (
        (trained["houlsby"], "bottleneck adapters live inside the backbone's layers"),
        (trained["prompt"], "virtual tokens cannot be merged"),
        (trained_cnn, "holds a text model"),
    ):
        with pytest.raises(UserError, match=reason):
            export_model(model_dir, "sentence-transformers", tmp_path / "st")
        assert list(tmp_path.iterdir()) == []  # no folder, and no staging folder left behind


def test_hf_export_is_the_train_folder_and_predicts_the_same(trained, tmp_path):
    folder = export_model(trained["lora"], "hf", tmp_path / "hf")
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in trained["lora"].iterdir())
    np.testing.assert_array_equal(load_model(folder).predict_proba(TEXTS), load_model(trained["lora"]).predict_proba(TEXTS))


def test_an_export_replaces_only_an_earlier_model_folder(trained, tmp_path):
    run = trained["lora"].parent
    before = sorted(p.name for p in run.iterdir())
    for out in (trained["lora"], run):  # the model's own folder, and the run folder around it
        with pytest.raises(UserError, match="holds the model being exported"):
            export_model(trained["lora"], "onnx", out)
    assert sorted(p.name for p in run.iterdir()) == before
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="holds no exported model"):
        export_model(trained["lora"], "onnx", papers)
    assert (papers / "thesis.tex").read_text() == "years of work"
    other_run = tmp_path / "other-run"  # another run's own model (a typo in --out): its only copy
    shutil.copytree(run, other_run)
    with pytest.raises(UserError, match="the model of the run in"):
        export_model(trained["lora"], "onnx", other_run / "model")
    assert sorted(p.name for p in (other_run / "model").iterdir()) == sorted(p.name for p in trained["lora"].iterdir())
    again = export_model(trained["lora"], "onnx", export_model(trained["lora"], "hf", tmp_path / "out"))  # an earlier export
    assert json.loads((again / "transferlab.json").read_text())["format"] == "onnx"
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / ".empty.old").mkdir()  # left by a publish interrupted between its renames
    assert (export_model(trained["lora"], "onnx", empty) / "transferlab.json").is_file()


def test_train_exports_the_formats_it_is_asked_for(tiny_bert_dir, sentiment_csv, tmp_path):
    from typer.testing import CliRunner

    from transferlab.cli import app

    common = ["--backbone", str(tiny_bert_dir), "--dataset", str(sentiment_csv), "--n-train", "64", "--n-test", "16", "--epochs", "1"]
    refused = CliRunner().invoke(app, ["train", "--strategy", "prompt", *common, "--export-format", "onnx", "--out", str(tmp_path / "p")])
    assert isinstance(refused.exception, UserError) and "export it as hf only" in str(refused.exception)
    assert not (tmp_path / "p").exists()  # refused before any work
    for strategy, reason in (("houlsby", "bottleneck adapters live inside"), ("head-all-layers", "reads 'weighted' layer features")):
        refused = CliRunner().invoke(
            app, ["train", "--strategy", strategy, *common, "--export-format", "sentence-transformers", "--out", str(tmp_path / strategy)]
        )
        assert isinstance(refused.exception, UserError) and reason in str(refused.exception)
        assert not (tmp_path / strategy).exists()  # refused before training, not after it
    unknown = CliRunner().invoke(app, ["train", "--strategy", "full", *common, "--export-format", "tflite", "--out", str(tmp_path / "u")])
    assert "unknown export format tflite" in str(unknown.exception)
    done = CliRunner().invoke(
        app, ["train", "--strategy", "full", *common, "--export-format", "onnx,sentence-transformers,hf", "--out", str(tmp_path / "run")]
    )
    assert done.exit_code == 0, done.output
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"model", "onnx", "sentence-transformers"} and not (run / "hf").exists()
    expected = load_model(run / "model").predict_proba(TEXTS)
    from transferlab.deploy import OnnxClassifier

    np.testing.assert_allclose(OnnxClassifier(run / "onnx").predict_proba(TEXTS), expected, atol=1e-4, rtol=0)


def test_a_decoder_exports_to_sentence_transformers_with_last_token_pooling(tiny_llama_dir, sentiment_csv, tmp_path):
    from sentence_transformers import SentenceTransformer

    config = load_run_config(
        None, backbone=str(tiny_llama_dir), dataset=str(sentiment_csv), strategies=["full"], cv=1, n_train=64, n_test=16,
        max_length=32, label_issues=False, training={"epochs": 1, "batch_size": 8, "min_steps": 4},
    )  # fmt: skip
    train(config, tmp_path / "run", log=lambda _: None)
    folder = export_model(tmp_path / "run" / "model", "sentence-transformers", tmp_path / "st")
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "lasttoken"
    encoded = SentenceTransformer(str(folder), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(encoded, _logits(tmp_path / "run" / "model", TEXTS), atol=1e-5, rtol=0)
