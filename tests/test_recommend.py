"""`transferlab recommend` and `compare --recommend`: the decision framework (decision.py) as a table, the command's output and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from transferlab.decision import Situation, data_bucket, decide
from transferlab.errors import UserError
from transferlab.recipes.recommend import recommend, verdict

# (n_train, gap, tasks, memory_gb, full fine-tuning GB, modality) -> (strategy, epochs): the decision framework's table, row by row
FRAMEWORK = [
    ((50, "small", 1, None, 0.4, "text"), ("head", None)),  # small data, small gap: feature extraction
    ((999, "medium", 1, None, 0.4, "text"), ("partial", 3)),  # medium gap: frozen early layers (2.3)
    ((500, "large", 1, None, 0.4, "text"), ("lora", 10)),  # small data, large gap: PEFT
    ((5_000, "small", 1, None, 0.4, "text"), ("lora", 5)),  # between the buckets, small gap: light fine-tuning
    ((5_000, "medium", 1, None, 0.4, "text"), ("partial", 3)),
    ((5_000, "large", 1, None, 0.4, "image"), ("full", 15)),
    ((20_000, "small", 1, None, 0.4, "text"), ("full", 3)),  # large data, small gap: converges quickly
    ((20_000, "large", 1, None, 0.4, "text"), ("full", 4)),  # large data, large gap: longer training
    ((20_000, "large", 1, None, 0.4, "image"), ("full", 15)),
    ((20_000, "small", 3, None, 0.4, "text"), ("lora", 5)),  # several tasks: one adapter per task
    ((20_000, "small", 1, 0.2, 0.4, "text"), ("lora", 5)),  # memory below full fine-tuning's need
    ((20_000, "small", 1, 8.0, 0.4, "text"), ("full", 3)),  # enough memory: not constrained
]


@pytest.mark.parametrize(("situation", "expected"), FRAMEWORK)
def test_decision_framework_follows_its_table(situation, expected):
    decision = decide(Situation(*situation))
    assert (decision.strategy, decision.epochs) == expected
    assert decision.reasons[0].startswith(f"data size: {data_bucket(situation[0])}")


# (n_train, classes, modality, tasks, memory_gb) -> strategy: few-shot text (examples per class on average) goes to
# SetFit unless an earlier rule holds
FEW_SHOT = [
    ((16, 2, "text", 1, None), "setfit"),  # 8 per class
    ((128, 2, "text", 1, None), "setfit"),  # 64 per class
    ((256, 2, "text", 1, None), "setfit"),  # 128 per class: the largest size measured
    ((258, 2, "text", 1, None), "head"),  # 129 per class: small data, small gap
    ((774, 6, "text", 1, None), "head"),  # 129 per class over six classes
    ((300, 8, "text", 1, None), "setfit"),  # 37.5 per class, however rare the rarest is
    ((7_674, 8, "text", 1, None), "lora"),  # reuters-r8 whole: 959 per class, though "grain" has 51
    ((16, 2, "image", 1, None), "head"),  # SetFit's pairs are for text encoders
    ((16, 2, "text", 3, None), "lora"),  # several tasks: one adapter per task first
    ((16, 2, "text", 1, 0.2), "lora"),  # SetFit trains the whole body: not under a memory limit
]


@pytest.mark.parametrize(("case", "expected"), FEW_SHOT)
def test_few_shot_text_goes_to_setfit(case, expected):
    n_train, classes, modality, tasks, memory = case
    decision = decide(Situation(n_train, "small", tasks, memory, 0.4, modality, classes=classes))
    assert decision.strategy == expected
    if expected == "setfit":
        assert decision.epochs is None and decision.reasons[-1].startswith(f"few-shot ({n_train / classes:.3g} examples per class")


def test_data_size_buckets_at_the_framework_boundaries():
    assert [data_bucket(n) for n in (999, 1_000, 10_000, 10_001)] == ["small", "medium", "medium", "large"]


def test_memory_reason_names_both_sides():
    reasons = decide(Situation(20_000, "small", 1, 0.2, 0.36)).reasons
    assert "memory: 0.2 GB, below full fine-tuning's 0.36 GB (weights, gradients, Adam)" in reasons
    assert reasons[-1].startswith("memory constrained: PEFT")


def _comparison(best: str, others: dict) -> dict:
    return {"metric": "accuracy", "best": best, "test": "paired t-test", "others": others}


def test_verdict_reads_the_comparison_block():
    others = {"lora": {"gap": 0.01, "p_value": 0.4, "within_noise": True}, "head": {"gap": 0.1, "p_value": 0.001, "within_noise": False}}
    ok = {name: {"status": "ok"} for name in ("full", "lora", "head")}
    assert verdict("full", _comparison("full", others), ok)["within_noise"] is True
    close = verdict("lora", _comparison("full", others), ok)
    assert close["within_noise"] is True and "within noise of the best, full" in close["verdict"]
    worse = verdict("head", _comparison("full", others), ok)
    assert worse["within_noise"] is False and "significantly worse" in worse["verdict"]
    absent = verdict("partial", _comparison("full", others), ok)
    assert absent["within_noise"] is None and absent["verdict"] == "recommended partial was not compared (best: full)"
    single = verdict("lora", _comparison("full", {"lora": {"gap": 0.02, "p_value": None, "within_noise": None}}), ok)
    assert single["within_noise"] is None and "untested against (one run each" in single["verdict"]
    failed = {**ok, "partial": {"status": "failed", "reason": "out of memory"}}
    assert verdict("partial", _comparison("full", others), failed)["verdict"] == "recommended partial failed: out of memory (best: full)"
    nothing = verdict("partial", _comparison(None, {}), {"partial": {"status": "failed", "reason": "out of memory"}})
    assert nothing["verdict"] == "recommended partial failed: out of memory (no strategy finished)"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "transferlab.cli", *map(str, args)], capture_output=True, text=True)


def test_recommend_prints_strategy_settings_and_reasons(tiny_bert_dir, sentiment_csv):
    done = _cli("recommend", "--backbone", tiny_bert_dir, "--dataset", sentiment_csv, "--n-train", 40, "--tasks", 1)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("recommended strategy: ")
    assert "data size: small (40 labelled examples" in done.stdout
    assert "domain gap: " in done.stdout and "from tokenizer" in done.stdout


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"tasks": 0}, "--tasks >= 1"), ({"memory_gb": 0}, "--memory-gb > 0"), ({"n_train": 100_000}, "more than the 240 examples")],
)
def test_recommend_refuses_bad_input(tiny_bert_dir, sentiment_csv, settings, message):
    with pytest.raises(UserError, match=message):
        recommend(str(tiny_bert_dir), str(sentiment_csv), **settings, log=lambda m: None)


def test_recommend_error_is_one_line_and_exit_2(tiny_bert_dir):
    done = _cli("recommend", "--backbone", tiny_bert_dir, "--dataset", "no-such-dataset")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: unknown dataset 'no-such-dataset'") and len(done.stderr.strip().splitlines()) == 1


def test_compare_recommend_records_the_verdict(tmp_path, tiny_bert_dir, sentiment_csv):
    out = tmp_path / "run"
    done = _cli(
        "compare",
        "--backbone",
        tiny_bert_dir,
        "--dataset",
        sentiment_csv,
        "--strategies",
        "head,lora",
        "--n-train",
        60,
        "--n-test",
        40,
        "--cv",
        2,
        "--epochs",
        1,
        "--recommend",
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "results.json").read_text())["recommendation"]
    assert record["n_train"] == 30  # what each of the 2 folds' models learns from: 60 less the fold it tests on
    assert record["strategy"] == "setfit"  # 15 texts of each class: few-shot
    assert "logistic head (C = 1, balanced class weights) on the tuned features scaled to unit length" in record["settings"]["trains"]
    assert record["best"] == json.loads((out / "results.json").read_text())["comparison"]["best"]
    assert record["verdict"] in done.stderr


def test_a_run_recommends_for_the_examples_its_models_learn_from(tiny_bert_dir, sentiment_csv):
    """A run with a validation file learns from more examples than its training file holds: the recommendation counts
    them all, and measures the domain gap on the file."""
    from transferlab.recipes.recommend import recommend

    record = recommend(str(tiny_bert_dir), str(sentiment_csv), labelled=400, log=lambda _: None)
    assert record["n_train"] == 400  # the file holds 240
    assert recommend(str(tiny_bert_dir), str(sentiment_csv), labelled=60, log=lambda _: None)["n_train"] == 60
