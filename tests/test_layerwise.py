"""Layer-wise controls: discriminative learning rates, the slanted triangular schedule, gradual unfreezing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from transferlab.backbones import TextPreprocessor, build_classifier, resolve_backbone
from transferlab.settings import TrainingConfig
from transferlab.strategies import STRATEGIES, get_strategy
from transferlab.strategies.base import layer_lr_table
from transferlab.training.loop import FitData, slanted_triangular

from .conftest import sentiment_texts

EXPECTED_TABLE = [  # discriminative fine-tuning (ULMFiT): L = 6, lr 3e-5, eta 0.95, head first
    ("Head (classifier)", "3.00e-05"),
    ("Layer 6", "2.85e-05"),
    ("Layer 5", "2.71e-05"),
    ("Layer 4", "2.57e-05"),
    ("Layer 3", "2.44e-05"),
    ("Layer 2", "2.32e-05"),
    ("Layer 1", "2.21e-05"),
    ("Embeddings", "2.10e-05"),
]


def test_lr_table_reproduces_the_expected_rates():
    names = ["Embeddings"] + [f"Layer {i}" for i in range(1, 7)] + ["Head (classifier)"]
    table = list(reversed(layer_lr_table(names, 3e-5, 0.95)))
    assert [(name, f"{lr:.2e}") for name, lr in table] == EXPECTED_TABLE


def test_lr_table_command():
    done = subprocess.run(
        [sys.executable, "-m", "transferlab.cli", "lr-table", "--layers", "6", "--lr", "3e-5", "--eta", "0.95"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "e-05" in line]
    assert [tuple(part.strip() for part in row.strip("│┃ ").split("│")) for row in rows] == EXPECTED_TABLE


@pytest.mark.parametrize("total, peak_at", [(1000, 100), (15, 1), (37, 3)])
def test_slanted_triangular_shape(total, peak_at):
    """Rises to the peak at a tenth of the steps (rounded down), then falls all the way to the last step."""
    values = [slanted_triangular(t, total) for t in range(total + 1)]
    peak = max(range(total + 1), key=values.__getitem__)
    assert peak == peak_at and values[peak] == pytest.approx(1.0)
    assert values[-2] > values[-1]  # still falling at the end: the floor is reached at the last step, not before
    assert values[0] == pytest.approx(1 / 32) and values[-1] == pytest.approx(1 / 32)
    assert all(a <= b for a, b in zip(values[:peak], values[1 : peak + 1]))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1 :]))


def _data(path, n=96):
    pre = TextPreprocessor.from_pretrained(str(path), 32)
    texts, labels = sentiment_texts(n)
    features = pre.encode(texts, labels)
    return FitData(features[:64], features[64:], pre.collate, ["negative", "positive"], pre.length_of)


def test_discriminative_rates_reach_the_optimizer(tiny_bert_dir):
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), ["a", "b"], "mean")
    data = _data(tiny_bert_dir)
    strategy = get_strategy("discriminative", lr=1e-3, layer_decay=0.5)
    scale = strategy.lr_scale(model, data, TrainingConfig())
    expected = {"head": 1.0, "layer.2": 0.5, "layer.1": 0.25, "embeddings": 0.125}
    for name, _ in model.named_parameters():
        assert scale(name) == expected[model.group_of(name)], name
    assert data.log_history[-1]["lr_table"] == {g: 1e-3 * s for g, s in expected.items()}
    from transferlab.training.loop import _Trainer

    trainer = _Trainer(
        model=model,
        lr_scale=scale,
        args=__import__("transformers").TrainingArguments(output_dir="/tmp/unused", learning_rate=1e-3, report_to=[]),
    )
    rates = sorted({group["lr"] for group in trainer.create_optimizer().param_groups})
    assert rates == pytest.approx(sorted({1e-3 * s for s in expected.values()}))


def test_gradual_unfreezing_follows_ulmfits_stage_order(tiny_bert_dir):
    torch.manual_seed(0)
    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), ["a", "b"], "mean")
    data = _data(tiny_bert_dir)
    strategy = get_strategy("gradual", epochs_per_stage=1, stages=4)
    strategy.fit(model, data, TrainingConfig(batch_size=16, patience=100))
    stages = [entry["trainable_groups"] for entry in data.log_history if "trainable_groups" in entry]
    assert stages == [["head"], ["layer.2", "head"], ["layer.1", "layer.2", "head"], ["embeddings", "layer.1", "layer.2", "head"]]


@pytest.mark.parametrize("name", [n for n, cls in STRATEGIES.items() if cls.starts_at_pretrained])
def test_freshly_applied_strategy_computes_the_pretrained_function(name, tiny_backbone):
    torch.manual_seed(0)
    model = build_classifier(resolve_backbone(str(tiny_backbone)), ["a", "b"], "mean").eval()
    pre = TextPreprocessor.from_pretrained(str(tiny_backbone), 32)
    batch = pre.collate(pre.encode(sentiment_texts(8)[0]))
    with torch.no_grad():
        before = model(**batch).logits.clone()
        after = get_strategy(name).prepare(model).eval()(**batch).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_the_cpu_by_default_where_native_and_never_emulated(monkeypatch, native):
    from transferlab.training.inference import precision_flags, precision_in_use

    monkeypatch.setattr("transferlab.training.inference.cpu_has_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bf16 = {"bf16": True, "use_cpu": True}
    assert precision_flags("fp32") == precision_flags("fp16") == {}
    assert precision_flags("auto") == precision_flags("bf16") == (bf16 if native else {})
    assert [precision_in_use(c) for c in ("auto", "fp32", "bf16", "fp16")] == (["bf16", "fp32", "bf16", "fp32"] if native else ["fp32"] * 4)


@pytest.mark.parametrize("bf16_gpu", [True, False])
def test_on_a_gpu_auto_takes_bf16_where_it_has_it_else_fp16(monkeypatch, bf16_gpu):
    from transferlab.training.inference import precision_in_use

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_gpu)
    assert [precision_in_use(c) for c in ("auto", "fp32", "bf16", "fp16")] == ["bf16" if bf16_gpu else "fp16", "fp32", "bf16", "fp16"]


def test_a_bf16_run_trains_in_bf16_and_is_scored_in_fp32(monkeypatch, tiny_bert_dir, sentiment_csv):
    """bf16 (emulated here when the CPU lacks it) for the training steps, with fp32 master weights; the test logits
    the run scores are the fp32 model's, as the exported model computes them."""
    from transferlab.config import load_run_config
    from transferlab.recipes import experiment as experiment_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("transferlab.training.inference.cpu_has_bf16", lambda: True)
    scored = []
    real_predict = experiment_module.predict_logits

    def watched(model, features, *args):
        scored.append((model, features, args, real_predict(model, features, *args)))
        return scored[-1][-1]

    monkeypatch.setattr(experiment_module, "predict_logits", watched)
    config = load_run_config(
        None, strategies=["full"], backbone=str(tiny_bert_dir), dataset=str(sentiment_csv), cv=1, n_train=64, n_test=16,
        label_issues=False, training={"precision": "bf16", "epochs": 1, "batch_size": 8, "min_steps": 4, "lr": 1e-3},
    )  # fmt: skip
    experiment = experiment_module.prepare(config, log=lambda _: None)
    seen: set[torch.dtype] = set()
    real_build = experiment_module.build_classifier

    def build_and_watch(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.classifier.register_forward_hook(lambda module, inputs, out: seen.add(out.dtype) if module.training else None)
        return model

    monkeypatch.setattr(experiment_module, "build_classifier", build_and_watch)
    run = experiment_module.run_strategy(experiment, "full")
    assert run.result["status"] == "ok"
    assert seen == {torch.bfloat16}  # the training forward ran under bf16 autocast
    model, features, args, logits = scored[-1]
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # master weights stay fp32
    np.testing.assert_allclose(logits, real_predict(model, features, *args), atol=1e-6, rtol=0)  # scored in fp32


def test_training_precision_follows_the_choice(monkeypatch):
    from transferlab.training.inference import training_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("transferlab.training.inference.cpu_has_bf16", lambda: True)
    x = torch.randn(4, 8)
    with training_precision(TrainingConfig(precision="fp32")):
        assert (x @ x.T).dtype == torch.float32
    for choice in ("auto", "bf16"):  # auto on a CPU that computes bf16 natively: bf16
        with training_precision(TrainingConfig(precision=choice)):
            assert (x @ x.T).dtype == torch.bfloat16
    monkeypatch.setattr("transferlab.training.inference.cpu_has_bf16", lambda: False)
    for choice in ("auto", "bf16"):
        with training_precision(TrainingConfig(precision=choice)):
            assert (x @ x.T).dtype == torch.float32


@pytest.mark.parametrize(
    "native, precision, said",
    [
        (True, "auto", "computes bf16 natively"),
        (True, "fp32", None),
        (True, "bf16", None),
        (False, "auto", None),
        (False, "fp32", None),
        (False, "bf16", "not compute bf16 natively"),
        (True, "fp16", "not compute fp16 natively"),
    ],
)
def test_the_run_says_what_its_precision_choice_means_on_this_cpu(monkeypatch, tiny_bert_dir, sentiment_csv, native, precision, said):
    from transferlab.config import load_run_config
    from transferlab.recipes.experiment import prepare, run_record

    monkeypatch.setattr("transferlab.recipes.experiment.cpu_has_bf16", lambda: native)
    monkeypatch.setattr("transferlab.training.inference.cpu_has_bf16", lambda: native)
    monkeypatch.setattr("transferlab.recipes.experiment.default_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = load_run_config(
        None, strategies=["head"], backbone=str(tiny_bert_dir), dataset=str(sentiment_csv), training={"precision": precision}
    )
    lines: list[str] = []
    experiment = prepare(config, log=lines.append)
    precision_lines = [line for line in lines if "natively" in line]
    assert precision_lines == [] if said is None else len(precision_lines) == 1 and said in precision_lines[0]
    # the record says what training computed in: bf16 only where asked for (or auto) and native
    assert run_record(experiment, "compare")["training_precision"] == ("bf16" if native and precision in ("auto", "bf16") else "fp32")


@pytest.mark.parametrize("native, gpu", [(True, False), (False, False), (True, True)])
def test_auto_keeps_fp32_on_a_cpu_for_a_family_that_declines_bf16(monkeypatch, native, gpu):
    """The CNN family lost accuracy in bf16 (LoRA collapsed): auto trains it in fp32 on such a CPU, text still gets
    bf16; an explicit choice, and a GPU, are left as they are."""
    from transferlab.backbones.registry import FAMILIES
    from transferlab.training.inference import precision_for

    monkeypatch.setattr("transferlab.training.inference.cpu_has_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    cnn, text = FAMILIES["cnn"], FAMILIES["encoder"]
    assert cnn.cpu_bf16_declined and text.cpu_bf16_declined is None
    assert precision_for("auto", cnn) == ("fp32" if native and not gpu else "auto")
    assert [precision_for(c, cnn) for c in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    assert [precision_for(c, text) for c in ("auto", "fp32", "bf16", "fp16")] == ["auto", "fp32", "bf16", "fp16"]


def test_a_cnn_run_on_a_bf16_cpu_trains_in_fp32_and_says_why(monkeypatch, tmp_path, tiny_cnn_dir):
    from tests.conftest import bright_side_image_folder
    from transferlab.config import load_run_config
    from transferlab.recipes.experiment import prepare, run_record

    bright_side_image_folder(tmp_path / "images", 40)
    for module in ("recipes.experiment", "training.inference"):
        monkeypatch.setattr(f"transferlab.{module}.cpu_has_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = load_run_config(None, backbone=str(tiny_cnn_dir), dataset=str(tmp_path / "images"), cv=1, n_test=10, image_size=32)
    lines: list[str] = []
    experiment = prepare(config, log=lines.append)
    assert [line for line in lines if "natively" in line] == [
        f"this CPU computes bf16 natively, but auto trains cnn backbones in fp32: {experiment.config.family.cpu_bf16_declined}"
    ]
    assert experiment.config.training.precision == "fp32" and run_record(experiment, "compare")["training_precision"] == "fp32"
