"""Bad input, table-driven: each case exits with code 2 and ends with one error line that names the problem,
without a traceback, and leaves nothing that looks like a finished result. Run in-process for speed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import sentiment_texts

OK_ROWS = "text,label\n" + "".join(f"{w} film {i},{'pos' if i % 2 else 'neg'}\n" for i, w in enumerate(["good", "bad"] * 20))


def _write_inputs(d: Path) -> None:
    """Every malformed input of the table below, written into one folder."""
    (d / "ok.csv").write_text(OK_ROWS)
    (d / "nolabel.csv").write_text("text,target\ngood,1\nbad,0\n")
    (d / "empty.csv").write_text("")
    (d / "oneclass.csv").write_text("text,label\ngood,1\nfine,1\n")
    (d / "latin1.csv").write_bytes("text,label\ncaf\xe9 cr\xe8me,pos\nbad,neg\n".encode("latin-1"))
    (d / "emptytext.csv").write_text("text,label\n  ,pos\n   ,neg\n,neg\n")
    (d / "nanlabel.csv").write_text("text,label\ngood,pos\nbad,\nfine,pos\n")
    (d / "few.csv").write_text(OK_ROWS + "meh,neutral\nhmm,neutral\n")
    (d / "three.csv").write_text(OK_ROWS + "meh,neutral\nhmm,neutral\nso so,neutral\n")
    (d / "data.xlsx").write_text("not a spreadsheet")
    (d / "broken.jsonl").write_text('{"text": "good", "label": 1}\n{"text": "bad", "lab\n')
    (d / "rank0.yaml").write_text("strategies: [lora]\nstrategy_settings:\n  lora: {r: 0}\n")
    (d / "typo.yaml").write_text("strategis: [lora]\n")
    (d / "number-list.yaml").write_text("augment: 3\n")
    (d / "training-typo.yaml").write_text("training:\n  epoch: 2\n")
    (d / "training-renamed.yaml").write_text("training:\n  mixed_precision: bf16\n")  # the key's name before `precision`
    (d / "broken.yaml").write_text("strategies: [lora\n")
    (d / "list.yaml").write_text("- lora\n- full\n")
    (d / "text-lr.yaml").write_text("training:\n  lr: fast\n")
    (d / "accumulation0.yaml").write_text("training:\n  gradient_accumulation: 0\n")
    (d / "training-scalar.yaml").write_text("training: 3\n")
    (d / "no-strategies.yaml").write_text("strategies: none\n")
    (d / "settings-list.yaml").write_text("strategy_settings: [lora]\n")
    (d / "unseen.csv").write_text("text,label\ngood film,pos\nso-so film,neutral\n")
    (d / "header-only.csv").write_text("text,label\n")
    (d / "blank.jsonl").write_text('{"text": "good film"}\n{"text": "  "}\n')
    spam = ["yes" if i == 7 else str(i % 3) for i in range(20)]  # row 8 is not 0/1, nor is a 2
    (d / "wide.csv").write_text("text,toxic,spam\n" + "".join(f"word {i},{i % 2},{spam[i]}\n" for i in range(20)))
    other = d / "other-run"
    other.mkdir()
    (other / "config.yaml").write_text("backbone: minilm-l6\n")
    images = d / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
    (images / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (images / "b" / "broken.png").write_bytes(b"GIF89a")


COMPARE = ["compare", "--backbone", "{tiny}", "--out", "{d}/run"]
PREDICT = ["predict", "--output", "{d}/predictions.csv"]

CASES = {
    "missing label column": (COMPARE + ["--dataset", "{d}/nolabel.csv"], "no column 'label'"),
    "misspelt label column": (COMPARE + ["--dataset", "{d}/ok.csv", "--label-column", "lable"], "did you mean 'label'"),
    "misspelt text column": (COMPARE + ["--dataset", "{d}/ok.csv", "--text-column", "txt"], "did you mean 'text'"),
    "empty file": (COMPARE + ["--dataset", "{d}/empty.csv"], "the file is empty"),
    "single class": (COMPARE + ["--dataset", "{d}/oneclass.csv"], "single class"),
    "not UTF-8": (COMPARE + ["--dataset", "{d}/latin1.csv"], "not valid UTF-8"),
    "every text empty": (COMPARE + ["--dataset", "{d}/emptytext.csv"], "every 'text' is empty"),
    "label columns that are not 0/1": (
        COMPARE + ["--dataset", "{d}/wide.csv", "--label-columns", "toxic,spam"],
        "row 3 has '2' in label column 'spam'",
    ),
    "a misspelt label column among several": (
        COMPARE + ["--dataset", "{d}/wide.csv", "--label-columns", "toxic,spma"],
        "did you mean 'spam'",
    ),
    "class weights on multi-label data": (
        COMPARE + ["--dataset", "{d}/ok.csv", "--label-separator", ";", "--class-weights", "balanced"],
        "does not apply to multi-label data",
    ),
    "sets of labels from an image folder": (
        ["compare", "--backbone", "{cnn}", "--dataset", "{d}/images", "--label-separator", ";", "--out", "{d}/run"],
        "multi-label images need a table",
    ),
    "validation file without a test file": (
        COMPARE + ["--dataset", "{d}/ok.csv", "--validation-dataset", "{d}/ok.csv"],
        "--validation-dataset needs --test-dataset",
    ),
    "folds with a test file": (COMPARE + ["--dataset", "{d}/ok.csv", "--test-dataset", "{d}/ok.csv", "--cv", "5"], "use --seeds"),
    "test file with a new class": (
        COMPARE + ["--dataset", "{d}/ok.csv", "--test-dataset", "{d}/few.csv"],
        "does not occur in the training data",
    ),
    "missing label value": (COMPARE + ["--dataset", "{d}/nanlabel.csv"], "row 2 has no label"),
    "class smaller than the folds": (COMPARE + ["--dataset", "{d}/three.csv", "--cv", "5"], "fewer than the 5 folds"),
    "class too small to test": (COMPARE + ["--dataset", "{d}/few.csv"], "class 'neutral' has 2 distinct example"),
    "no such file": (COMPARE + ["--dataset", "{d}/missing.csv"], "no such file"),
    "unsupported file type": (COMPARE + ["--dataset", "{d}/data.xlsx"], "unsupported file type"),
    "malformed JSONL": (COMPARE + ["--dataset", "{d}/broken.jsonl"], "cannot be read as JSONL"),
    "unknown backbone": (COMPARE + ["--dataset", "{d}/ok.csv", "--backbone", "no-such-backbone"], "unknown backbone 'no-such-backbone'"),
    "misspelt strategy": (COMPARE + ["--dataset", "{d}/ok.csv", "--strategies", "lorra"], "did you mean 'lora'"),
    "negative epochs": (COMPARE + ["--dataset", "{d}/ok.csv", "--epochs", "-1"], "epochs must be positive"),
    "negative learning rate": (COMPARE + ["--dataset", "{d}/ok.csv", "--lr", "-0.001"], "learning rate must be positive"),
    "zero batch size": (COMPARE + ["--dataset", "{d}/ok.csv", "--batch-size", "0"], "batch size must be positive"),
    "LoRA rank 0": (COMPARE + ["--dataset", "{d}/ok.csv", "--config", "{d}/rank0.yaml"], "rank r must be at least 1"),
    "unknown config key": (COMPARE + ["--dataset", "{d}/ok.csv", "--config", "{d}/typo.yaml"], "did you mean 'strategies'"),
    "a number for a list": (COMPARE + ["--dataset", "{d}/ok.csv", "--config", "{d}/number-list.yaml"], "'augment' takes a list of names"),
    "unknown training key": (COMPARE + ["--dataset", "{d}/ok.csv", "--config", "{d}/training-typo.yaml"], "did you mean 'epochs'"),
    "renamed training key": (COMPARE + ["--dataset", "{d}/ok.csv", "--config", "{d}/training-renamed.yaml"], "did you mean 'precision'"),
    "malformed YAML": (COMPARE + ["--dataset", "{d}/ok.csv", "--config", "{d}/broken.yaml"], "cannot read config"),
    "YAML that is not a mapping": (COMPARE + ["--dataset", "{d}/ok.csv", "--config", "{d}/list.yaml"], "a config is a mapping"),
    "text for a number": (COMPARE + ["--dataset", "{d}/ok.csv", "--config", "{d}/text-lr.yaml"], "training: 'lr' takes a number"),
    "zero gradient accumulation": (
        COMPARE + ["--dataset", "{d}/ok.csv", "--config", "{d}/accumulation0.yaml"],
        "gradient_accumulation must be at least 1",
    ),
    "a training block that is not a mapping": (
        COMPARE + ["--dataset", "{d}/ok.csv", "--config", "{d}/training-scalar.yaml"],
        "training: takes a mapping",
    ),
    "no strategies in the config": (COMPARE + ["--dataset", "{d}/ok.csv", "--config", "{d}/no-strategies.yaml"], "no strategy given"),
    "strategy settings that are not a mapping": (
        COMPARE + ["--dataset", "{d}/ok.csv", "--config", "{d}/settings-list.yaml"],
        "'strategy_settings' takes a mapping",
    ),
    "a strategy named twice": (COMPARE + ["--dataset", "{d}/ok.csv", "--strategies", "head,lora,head"], "head named more than once"),
    "--out names a file": (["compare", "--backbone", "{tiny}", "--dataset", "{d}/ok.csv", "--out", "{d}/ok.csv"], "a file is there"),
    "misspelt metric": (COMPARE + ["--dataset", "{d}/ok.csv", "--metric", "accurcy"], "metric must be one of"),
    "unknown precision": (COMPARE + ["--dataset", "{d}/ok.csv", "--precision", "fp8"], "precision must be one of auto, fp32, bf16, fp16"),
    "unknown class weights": (
        COMPARE + ["--dataset", "{d}/ok.csv", "--class-weights", "balance"],
        "class weights must be one of auto, none, balanced",
    ),
    "imbalance out of range": (COMPARE + ["--dataset", "{d}/ok.csv", "--imbalance", "2"], "must be in (0, 0.5]"),
    "unknown augmentation": (COMPARE + ["--dataset", "{d}/ok.csv", "--augment", "shuffle"], "unknown text augmentation shuffle"),
    "resume with nothing to resume": (COMPARE + ["--dataset", "{d}/ok.csv", "--resume"], "nothing to resume"),
    "a different config in the run folder": (
        ["compare", "--backbone", "{tiny}", "--dataset", "{d}/ok.csv", "--out", "{d}/other-run"],
        "holds a run of a different config",
    ),
    "image that does not decode": (
        ["compare", "--backbone", "{cnn}", "--dataset", "{d}/images", "--out", "{d}/run"],
        "broken.png: not a readable image",
    ),
    "train with two strategies": (["train", "--strategy", "lora,full", "--backbone", "{tiny}", "--dataset", "{d}/ok.csv"], "one strategy"),
    "a budget that cannot be read": (
        ["auto", "--backbone", "{tiny}", "--dataset", "{d}/ok.csv", "--budget", "soon"],
        "--budget: cannot read",
    ),
    "zero trials": (["auto", "--backbone", "{tiny}", "--dataset", "{d}/ok.csv", "--max-trials", "0"], "--max-trials must be at least 1"),
    "auto export format": (
        ["auto", "--backbone", "{tiny}", "--dataset", "{d}/ok.csv", "--export-format", "tflite"],
        "unknown export format",
    ),
    "auto without enough examples to validate on, nor the recommendation among --strategies": (
        ["auto", "--backbone", "{tiny}", "--dataset", "{d}/ok.csv", "--strategies", "head", "--out", "{d}/auto-run"],
        "too few to search on, and the recommended setfit cannot be trained instead",
    ),
    "not a model folder": (PREDICT + ["--model", "{d}", "--text", "good"], "not a model exported"),
    "a model from an unfinished run": (PREDICT + ["--model", "{unfinished}/model", "--text", "good"], "did not finish"),
    "label the model never saw": (
        PREDICT + ["--model", "{model}", "--input", "{d}/unseen.csv", "--label-column", "label"],
        "row 2 has label 'neutral', which the model never saw",
    ),
    "misspelt predict column": (PREDICT + ["--model", "{model}", "--input", "{d}/ok.csv", "--text-column", "txt"], "did you mean 'text'"),
    "predict input not UTF-8": (PREDICT + ["--model", "{model}", "--input", "{d}/latin1.csv"], "not valid UTF-8"),
    "nothing to predict": (PREDICT + ["--model", "{model}"], "give one of --text"),
    "a predict table with a header and no rows": (
        PREDICT + ["--model", "{model}", "--input", "{d}/header-only.csv"],
        "header-only.csv: no rows",
    ),
    "a blank text in a predict table": (PREDICT + ["--model", "{model}", "--input", "{d}/blank.jsonl"], "row 2 has an empty 'text'"),
    "an int8 export of an image model": (
        [
            "train",
            "--backbone",
            "{cnn}",
            "--dataset",
            "{d}/images",
            "--strategy",
            "head",
            "--export-format",
            "onnx-int8",
            "--out",
            "{d}/run",
        ],
        "export an image model as onnx",
    ),
    "a blank --text": (PREDICT + ["--model", "{model}", "--text", "good", "--text", " "], "--text: an empty text"),
    "a report of an unfinished run": (["report", "{unfinished}"], "the run did not finish"),
    "max length past the backbone's positions": (
        ["check", "--backbone", "minilm-l6", "--dataset", "{d}/ok.csv", "--max-length", "1024"],
        "--max-length 1024 is more than the 512 tokens backbone 'minilm-l6' reads",
    ),
}


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """`transferlab ARGS` in this process: (exit code, stderr)."""
    from transferlab import cli

    argv = sys.argv
    sys.argv = ["transferlab", *args]
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main()
    finally:
        sys.argv = argv
    return exit_.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir) -> dict[str, Path]:
    """A finished `train` run, and a copy of it whose results.json is missing (as if killed before the end)."""
    from transferlab.config import load_run_config
    from transferlab.recipes.train import train

    base = tmp_path_factory.mktemp("trained")
    texts, labels = sentiment_texts(120)
    pd.DataFrame({"text": texts, "label": ["pos" if y else "neg" for y in labels]}).to_csv(base / "data.csv", index=False)
    config = load_run_config(None, strategies=["head"], backbone=str(tiny_bert_dir), dataset=str(base / "data.csv"), n_train=80, n_test=40)
    train(config, base / "run", log=lambda message: None)
    shutil.copytree(base / "run", base / "unfinished")
    (base / "unfinished" / "results.json").unlink()
    return {"model": base / "run" / "model", "unfinished": base / "unfinished"}


def test_the_suite_covers_at_least_25_malformed_inputs():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_with_one_clear_line(case, tmp_path, capsys, tiny_bert_dir, tiny_cnn_dir, trained):
    _write_inputs(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    template, message = CASES[case]
    places = {"d": tmp_path, "tiny": tiny_bert_dir, "cnn": tiny_cnn_dir, **trained}
    code, stderr = run_cli([part.format(**places) for part in template], capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2, stderr
    assert len(errors) == 1 and message in errors[0] and stderr.strip().endswith(errors[0]), stderr
    assert "Traceback" not in stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "a failed command wrote output"


def test_config_values_take_their_fields_types(tmp_path):
    """YAML reads 1e-4 (no dot) as text: it becomes the number the field takes. A list of label columns joins as the
    command line writes it; a strategy's settings are typed too."""
    from transferlab.config import load_run_config

    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: 1e-4\n  epochs: 2\nlabel_columns: [toxic, spam]\nstrategy_settings:\n  lora: {lr: 5e-4, r: 4.0}\n")
    config = load_run_config(path, default_strategies=["lora"])
    assert config.training.lr == 1e-4 and isinstance(config.training.lr, float) and config.training.epochs == 2.0
    assert config.label_columns == "toxic,spam" and config.strategies == ["lora"]
    lora = config.strategy("lora").config
    assert lora.lr == 5e-4 and lora.r == 4 and isinstance(lora.r, int)
    import numpy as np

    from transferlab.strategies import get_strategy

    grid = get_strategy("lora", r=np.arange(4, 5)[0], lr=np.float32(5e-4)).config  # numpy's scalars, as a search grid gives them
    assert grid.r == 4 and type(grid.r) is int and grid.lr == pytest.approx(5e-4) and type(grid.lr) is float
    path.write_text("strategies: [head]\n")
    assert load_run_config(path, default_strategies=["lora"]).strategies == ["head"]  # the file's, over the command's default
    assert load_run_config(path, default_strategies=["lora"], strategies=["full"]).strategies == ["full"]  # the command line's


def test_a_setting_a_run_cannot_take_stops_the_command_in_one_line(tmp_path, capsys, tiny_bert_dir):
    """Raised while a strategy is set up, after the data is read: the command stops with the error, not with a run
    recorded as failed."""
    (tmp_path / "ok.csv").write_text(OK_ROWS)
    args = ["compare", "--backbone", str(tiny_bert_dir), "--dataset", str(tmp_path / "ok.csv"), "--out", str(tmp_path / "run")]
    code, stderr = run_cli([*args, "--strategies", "partial", "--freeze-below", "99"], capsys)
    assert code == 2 and "freeze_below must be between" in stderr and "Traceback" not in stderr, stderr
    (tmp_path / "sequential.yaml").write_text("forgetting:\n  meter: sequential\n")
    code, stderr = run_cli([*args, "--strategies", "head", "--config", str(tmp_path / "sequential.yaml"), "--restart"], capsys)
    assert code == 2 and "transferlab forgetting --meter sequential" in stderr, stderr
