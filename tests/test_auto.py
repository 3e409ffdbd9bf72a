"""`transferlab auto`: a search over strategies x learning rate that chooses on validation only, tests the winner
once, exports it, and carries on after an interruption."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import NEUTRAL, sentiment_texts
from transferlab.config import load_run_config
from transferlab.errors import UserError
from transferlab.recipes.auto import auto, parse_budget
from transferlab.recipes.loading import load_model
from transferlab.settings import HEADLINE_METRICS
from transferlab.strategies.full import FullConfig
from transferlab.strategies.lora import LoraConfig

STRATEGIES = ["head", "full", "lora", "bitfit", "setfit"]


def _files(tmp_path, flip_test_labels: bool = False):
    """A training file and a separate test file, so a test can change the test labels and nothing else."""
    folder = tmp_path / ("flipped" if flip_test_labels else "plain")
    if folder.exists():
        return folder / "train.csv", folder / "test.csv"
    texts, labels = sentiment_texts(560, seed=3)
    names = np.array(["negative", "positive"])
    train_labels = np.array(labels[:480])
    train_labels[::10] = 1 - train_labels[::10]  # some labels wrong, as in real data: no trial is perfect on validation
    train = pd.DataFrame({"text": texts[:480], "label": names[train_labels]})
    test_labels = np.array(labels[480:])
    test = pd.DataFrame({"text": texts[480:], "label": names[1 - test_labels if flip_test_labels else test_labels]})
    folder.mkdir()
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv"


def _auto(tmp_path, backbone, name="out", flip_test_labels=False, max_trials=6, seeds=1, strategies=STRATEGIES, epochs=2):
    train, test = _files(tmp_path, flip_test_labels)
    config = load_run_config(
        None,
        backbone=str(backbone),
        dataset=str(train),
        test_dataset=str(test),
        strategies=list(strategies),
        seeds=seeds,
        max_length=40,
        training={"epochs": epochs, "batch_size": 16, "min_steps": 0},
        strategy_settings={"setfit": {"pair_iterations": 2}} if "setfit" in strategies else {},
    )
    return auto(config, tmp_path / name, budget_seconds=3600, max_trials=max_trials, log=lambda _: None)


@pytest.mark.parametrize(
    "text, seconds", [("20m", 1200), ("90s", 90), ("1h30m", 5400), ("2", 120), ("1.5h", 5400), ("45min", 2700), (" 10S ", 10)]
)
def test_budget_is_read_in_hours_minutes_and_seconds(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0m", "ten minutes", "5x", "-3m", "m"])
def test_a_budget_that_cannot_be_read_is_refused(text):
    with pytest.raises(UserError, match="budget"):
        parse_budget(text)


@pytest.mark.parametrize(
    "name, formats, left_out",
    [
        ("houlsby", ["sentence-transformers"], "bottleneck adapters live inside the backbone's layers"),
        ("head-all-layers", ["onnx", "sentence-transformers"], "reads 'weighted' layer features"),
        ("houlsby", ["onnx"], None),
        ("lora", ["sentence-transformers"], None),
        ("head", ["sentence-transformers"], None),
        ("prompt", ["sentence-transformers"], "virtual tokens do not merge"),
    ],
)
def test_a_search_leaves_out_what_the_export_cannot_hold(tiny_bert_dir, name, formats, left_out):
    from transferlab.backbones import build_classifier, resolve_backbone
    from transferlab.recipes.auto import _left_out_because
    from transferlab.strategies import STRATEGIES

    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), ["a", "b"])
    reason = _left_out_because(STRATEGIES[name](), model, formats, chosen_on_validation=False)
    assert (reason is None) if left_out is None else (left_out in reason)


def test_search_order_defaults_export_and_report(tmp_path, tiny_bert_dir):
    record = _auto(tmp_path, tiny_bert_dir)
    out = tmp_path / "out"
    trials = record["search"]["trials"]
    assert len(trials) == 6 and record["status"] == "complete"
    assert record["search"]["strategies"] == STRATEGIES
    # the cheap frozen-feature head first, then each strategy once at its own defaults, before any proposal
    assert [t["strategy"] for t in trials[:1]] == ["head"]
    first_looks = {t["strategy"]: t["settings"] for t in trials[:5]}
    assert set(first_looks) == set(STRATEGIES)
    assert first_looks["full"] == {"lr": FullConfig().lr}
    assert first_looks["lora"] == {"lr": LoraConfig().lr, "r": LoraConfig().r}
    for proposal in trials[5:]:  # TPE's proposals stay within each strategy's default / 3 .. x 3
        default = {"full": FullConfig().lr, "lora": LoraConfig().lr, "bitfit": 1e-3}.get(proposal["strategy"])
        if default is not None:
            assert default / 3 <= proposal["settings"]["lr"] <= default * 3
    winner = record["search"]["winner"]
    complete = [t for t in trials if t["state"] == "complete"]
    assert winner["validation"] == max(t["validation"] for t in complete)
    assert list(record["strategies"]) == [winner["strategy"]]
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 6 and board["validation"].iloc[0] == pytest.approx(winner["validation"])
    assert (out / "search.png").stat().st_size > 1000
    assert "Search" in (out / "report.html").read_text() and "search.png" in (out / "report.md").read_text()
    manifest = json.loads((out / "model" / "transferlab.json").read_text())
    assert manifest["strategy"] == winner["strategy"]
    model = load_model(out / "model")
    probs = model.predict_proba(["the film was great and lovely", "the plot was dull and boring"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_the_search_never_reads_the_test_labels(tmp_path, tiny_bert_dir):
    """The same search on the same training data, with every test label flipped: every trial scores the same on
    validation and the same winner is chosen; only its test score changes (to one minus itself)."""
    plain = _auto(tmp_path, tiny_bert_dir, "plain", max_trials=3)
    flipped = _auto(tmp_path, tiny_bert_dir, "flipped", flip_test_labels=True, max_trials=3)
    keys = ("strategy", "settings", "state", "validation", "evaluations")
    assert [{k: t[k] for k in keys} for t in plain["search"]["trials"]] == [{k: t[k] for k in keys} for t in flipped["search"]["trials"]]
    assert plain["search"]["winner"] == flipped["search"]["winner"]
    name = plain["search"]["winner"]["strategy"]
    accuracy = plain["strategies"][name]["metrics"]["accuracy"]["mean"]
    assert flipped["strategies"][name]["metrics"]["accuracy"]["mean"] == pytest.approx(1 - accuracy)


def test_small_data_validates_on_enough_examples_or_trains_the_recommendation(tmp_path, tiny_bert_dir, sentiment_csv):
    """240 labelled examples: 50 of them validate (not the usual 10%). 120: too few to spare 50, so there is no search:
    the recommended strategy (SetFit at 60 per class) trains on them and is tested once; one that the run's --strategies
    leave out is refused before any output."""
    config = load_run_config(None, backbone=str(tiny_bert_dir), dataset=str(sentiment_csv), strategies=["head"], n_train=160, max_length=40)
    record = auto(config, tmp_path / "out", budget_seconds=60, max_trials=1, log=lambda _: None)
    assert (record["n_val"], record["n_fit"]) == (50, 110)
    config = load_run_config(None, backbone=str(tiny_bert_dir), dataset=str(sentiment_csv), strategies=["head"], n_train=120, max_length=40)
    with pytest.raises(UserError, match="the recommended setfit cannot be trained instead: it is not among --strategies head"):
        auto(config, tmp_path / "small", budget_seconds=60, log=lambda _: None)
    assert not (tmp_path / "small").exists()
    config = load_run_config(
        None, backbone=str(tiny_bert_dir), dataset=str(sentiment_csv), strategies=["head", "setfit"], n_train=120, max_length=40,
        strategy_settings={"setfit": {"pair_iterations": 2}},
    )  # fmt: skip
    lines: list[str] = []
    record = auto(config, tmp_path / "few", budget_seconds=60, log=lines.append)
    search = record["search"]
    assert search["trials"] == [] and search["winner"]["strategy"] == "setfit" and "no search" in search["none_because"]
    assert record["recommendation"]["strategy"] == "setfit" and list(record["strategies"]) == ["setfit"]
    assert record["strategies"]["setfit"]["status"] == "ok"
    assert any("too few to choose by" in line for line in lines)
    assert (tmp_path / "few" / "model" / "transferlab.json").is_file() and not (tmp_path / "few" / "leaderboard.csv").exists()
    assert "no search" in (tmp_path / "few" / "report.md").read_text()


@pytest.mark.parametrize("prune_from", [2, 4])
def test_the_pruner_stops_a_trial_at_once_but_never_one_trained_to_its_end(tmp_path, tiny_bert_dir, monkeypatch, prune_from):
    """A pruner that says "prune" from the Nth evaluation on. 2 epochs x 2 evaluations: from the 2nd, each trained
    trial stops there; from the 4th (its last planned evaluation), stopping would save nothing, so none is pruned."""
    import optuna

    def should_prune(trial) -> bool:
        return len(trial.study._storage.get_trial(trial._trial_id).intermediate_values) >= prune_from

    monkeypatch.setattr(optuna.Trial, "should_prune", should_prune)
    trials = _auto(tmp_path, tiny_bert_dir, max_trials=3, strategies=["head", "full", "lora"])["search"]["trials"]
    trained = [t for t in trials if t["strategy"] != "head"]
    if prune_from == 2:
        assert [(t["state"], t["evaluations"]) for t in trained] == [("pruned", 2)] * 2
    else:
        assert {t["state"] for t in trained} == {"complete"} and all(t["evaluations"] >= 4 for t in trained)


class _Interrupted(BaseException):
    """Stands for Ctrl-C: not an Exception, so the search records nothing and the trial stays running."""


def test_an_interrupted_search_carries_on_with_the_trial_it_was_in(tmp_path, tiny_bert_dir, monkeypatch):
    """Interrupted during its second trial (full fine-tuning), the search resumes: the head is not run again, the
    interrupted trial is recorded and queued again, and the trials match an uninterrupted search's (their order,
    and so which of them the pruner stops, may differ)."""
    from transferlab.training import loop

    def interrupt(step: int, total: int) -> None:
        if step == 5:
            raise _Interrupted

    monkeypatch.setattr(loop, "PROGRESS_HOOKS", [interrupt])
    with pytest.raises(_Interrupted):
        _auto(tmp_path, tiny_bert_dir, "resumed", max_trials=3, strategies=["head", "full", "lora"])
    assert not (tmp_path / "resumed" / "results.json").exists()
    monkeypatch.setattr(loop, "PROGRESS_HOOKS", [])
    board = _auto(tmp_path, tiny_bert_dir, "resumed", max_trials=3, strategies=["head", "full", "lora"])["search"]["trials"]
    reference = _auto(tmp_path, tiny_bert_dir, "whole", max_trials=3, strategies=["head", "full", "lora"])["search"]["trials"]
    assert [t["strategy"] for t in board] == ["head", "full", "lora", "full"]
    assert board[1]["state"] == "failed" and "interrupted" in board[1]["reason"]
    tried = {(t["strategy"], str(t["settings"])): t for t in board if t["state"] != "failed"}
    assert set(tried) == {(t["strategy"], str(t["settings"])) for t in reference}
    for t in reference:
        again = tried[(t["strategy"], str(t["settings"]))]
        if t["state"] == again["state"] == "complete":
            assert again["validation"] == t["validation"]


@pytest.mark.parametrize("metric", HEADLINE_METRICS)
def test_every_metric_steers_the_search(tmp_path, tiny_bert_dir, metric):
    """Three imbalanced string classes (one with no sentiment word at all); the search scores each trial by the
    metric asked for and the winner is the trial with the highest score."""
    texts, labels = sentiment_texts(420, seed=5)
    names = ["negative", "positive"]
    rows = [(t, names[y]) for t, y in zip(texts, labels)][:300]
    rows = [r for i, r in enumerate(rows) if r[1] == "positive" or i % 3 == 0]  # 3:1 positive to negative
    filler = sentiment_texts(60, seed=9)[0]
    rows += [(" ".join(w for w in t.split() if w in NEUTRAL) or "the film", "neutral") for t in filler]
    path = tmp_path / "three.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    config = load_run_config(
        None, backbone=str(tiny_bert_dir), dataset=str(path), strategies=["head", "full"], cv=1, n_test=60, max_length=40,
        training={"metric": metric, "epochs": 1, "batch_size": 16, "min_steps": 0},
    )  # fmt: skip
    record = auto(config, tmp_path / "out", budget_seconds=600, max_trials=2, log=lambda _: None)
    trials = record["search"]["trials"]
    assert [t["strategy"] for t in trials] == ["head", "full"] and record["search"]["metric"] == metric
    scores = [t["validation"] for t in trials]
    assert all(-1 <= s <= 1 for s in scores)
    assert record["search"]["winner"]["validation"] == max(scores)
    assert record["primary_metric"] == metric and metric in record["strategies"][record["search"]["winner"]["strategy"]]["metrics"]


def test_an_image_search_leaves_out_what_does_not_apply_and_exports_the_winner(tmp_path, tiny_cnn_dir):
    """A CNN: prompt tuning has no token sequence to prepend to, so the search leaves it out and says why."""
    from tests.conftest import bright_side_image_folder

    bright_side_image_folder(tmp_path / "images", 240)
    config = load_run_config(
        None, backbone=str(tiny_cnn_dir), dataset=str(tmp_path / "images"), strategies=["head", "full", "prompt"], cv=1,
        n_test=40, image_size=32, training={"epochs": 1, "batch_size": 16, "min_steps": 0},
    )  # fmt: skip
    lines: list[str] = []
    record = auto(config, tmp_path / "out", budget_seconds=600, max_trials=2, log=lines.append)
    assert record["search"]["strategies"] == ["head", "full"]
    assert any(line.startswith("auto leaves out prompt:") for line in lines)
    assert load_model(tmp_path / "out" / "model").label_names == ["left", "right"]


def test_trials_in_flight_side_by_side_count_against_the_limit_and_the_budget(tmp_path, tiny_bert_dir):
    """The search as Ray workers see it: two trials handed out before either ends; --max-trials counts those in
    flight; past the deadline a trial is stopped at its next evaluation, except at its last planned one."""
    import time

    from transferlab.recipes.auto import Search, leaderboard, planned_evaluations

    config = load_run_config(None, backbone=str(tiny_bert_dir), strategies=["head", "lora", "full"], training={"epochs": 2})
    lines: list[str] = []
    search = Search(tmp_path, config, ["head", "lora", "full"], 3600, 3, time.time(), lines.append)
    first, second = search.next_trial(), search.next_trial()
    assert (first[1], second[1]) == ("head", "lora")  # the first looks, in order, to two workers at once
    search.complete(first[0], 0.7, 1.0, None)
    third = search.next_trial()
    assert third[1] == "full"
    assert search.next_trial() is None  # 1 finished + 2 in flight = 3
    last = planned_evaluations(config)
    search.deadline = time.time() - 1  # the budget is spent
    assert search.report(second[0], 1, 0.6) == "budget"
    assert search.report(third[0], last, 0.8) is None  # trained to its end: stopping now would save nothing
    assert search.report(third[0], last + 1, 0.8) == "budget"  # a strategy evaluated more often than planned stops
    assert search.complete(second[0], 0.9, 2.0, "budget")  # stopped at its best checkpoint: still a candidate
    search.fail(third[0], "ValueError: bad", 3.0)
    states = [t.state.name for t in search.study.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    assert search.study.best_trial.number == second[0]  # it passed the head before the deadline, so it wins
    assert [row["state"] for row in leaderboard(search.study)] == ["complete", "budget", "failed"]
    assert lines[0].startswith("trial 0: head") and "stopped by the budget" in lines[1] and lines[2].endswith("ValueError: bad")


def test_a_perfect_validation_score_ends_the_search_and_stops_the_trials_beside_it(tmp_path, tiny_bert_dir):
    """No trial can beat a validation score of 1.0 (ties go to the earlier trial): the search hands out no more
    trials, within budget and --max-trials, and one in flight on another worker stops at its next evaluation."""
    import time

    from transferlab.recipes.auto import Search

    config = load_run_config(None, backbone=str(tiny_bert_dir), strategies=["head", "lora", "full"], training={"epochs": 2})
    lines: list[str] = []
    search = Search(tmp_path, config, ["head", "lora", "full"], 3600, None, time.time(), lines.append)
    first, second = search.next_trial(), search.next_trial()
    assert search.report(second[0], 1, 0.9) is None
    search.complete(first[0], 1.0, 1.0, None)
    assert search.report(second[0], 2, 0.95) == "decided"
    search.complete(second[0], 0.95, 2.0, "decided")
    assert search.next_trial() is None
    finished = [t.state.name for t in search.study.trials if t.state.is_finished()]
    assert finished == ["COMPLETE", "PRUNED"]  # full's first look stays queued, never trained
    assert search.study.user_attrs["decided_by"] == first[0]
    assert "trial 0 reached the maximum validation accuracy" in lines[-1]


def test_a_search_resumed_over_other_strategies_is_refused(tmp_path, tiny_bert_dir):
    """An export format can leave strategies out of the search (prompt tuning cannot be ONNX), and run folders do not
    record formats: a resume whose strategies changed is refused in one line (Optuna itself would raise)."""
    import time

    from transferlab.recipes.auto import Search

    config = load_run_config(None, backbone=str(tiny_bert_dir), strategies=["head", "prompt"], training={"epochs": 2})
    Search(tmp_path, config, ["head", "prompt"], 3600, None, time.time(), lambda _: None).next_trial()
    with pytest.raises(UserError, match="holds a search over head, prompt, and this run would search head .*pass --restart"):
        Search(tmp_path, config, ["head"], 3600, None, time.time(), lambda _: None)
    assert Search(tmp_path, config, ["head", "prompt"], 3600, None, time.time(), lambda _: None).next_trial() is not None


def test_a_search_below_the_maximum_goes_on(tmp_path, tiny_bert_dir):
    import time

    from transferlab.recipes.auto import Search

    config = load_run_config(None, backbone=str(tiny_bert_dir), strategies=["head", "lora"], training={"epochs": 2})
    search = Search(tmp_path, config, ["head", "lora"], 3600, None, time.time(), lambda _: None)
    first = search.next_trial()
    search.complete(first[0], 0.999, 1.0, None)
    assert search.next_trial() is not None


@pytest.mark.parametrize(
    ("strategies", "left_out", "trials", "expected"),
    [
        (["head", "lora"], {}, [("lora", 0.9), ("head", 0.8)], "the recommended lora won the search"),
        (["head", "lora"], {}, [("head", 0.8), ("lora", 0.7)], "the recommended lora reached 0.7000 on validation; head won with 0.8000"),
        (["head"], {"lora": "no reason"}, [("head", 0.8)], "the recommended lora was left out of the search (no reason); head won"),
        (["head"], {}, [("head", 0.8)], "the recommended lora was not among the strategies to search; head won"),
        (["head", "lora"], {}, [("head", 0.8)], "the budget ran out before the recommended lora was tried; head won"),
        (["head", "lora"], {}, [("head", 0.8), ("lora", None)], "the recommended lora failed (OutOfMemoryError: x); head won"),
    ],
)
def test_the_verdict_says_what_became_of_the_recommendation(strategies, left_out, trials, expected):
    from transferlab.recipes.auto import _verdict

    rows = [
        {"strategy": name, "validation": value, "reason": None if value is not None else "OutOfMemoryError: x"} for name, value in trials
    ]
    best = max((row for row in rows if row["validation"] is not None), key=lambda row: row["validation"])
    search = {"strategies": strategies, "left_out": left_out, "trials": rows, "winner": best}
    assert _verdict("lora", search) == expected


def test_gradual_unfreezing_is_judged_at_its_end_only(tmp_path, tiny_bert_dir, monkeypatch):
    """Its first stage trains the head alone, so the pruner's call mid-run is ignored for it and kept for the others."""
    import time

    import optuna

    from transferlab.recipes.auto import Search

    monkeypatch.setattr(optuna.Trial, "should_prune", lambda trial: True)
    config = load_run_config(None, backbone=str(tiny_bert_dir), strategies=["gradual", "lora"], training={"epochs": 2})
    search = Search(tmp_path, config, ["gradual", "lora"], 3600, None, time.time(), lambda _: None)
    gradual, lora = search.next_trial(), search.next_trial()
    assert (gradual[1], lora[1]) == ("gradual", "lora")
    assert search.report(gradual[0], 1, 0.3) is None
    assert search.report(lora[0], 1, 0.3) == "pruned"


def test_a_search_with_nothing_left_to_tune_ends_instead_of_training_the_same_trial_again(tmp_path, tiny_bert_dir):
    """The head has no setting to tune: after its first look every proposal repeats it, and the search ends with its
    budget unspent rather than training the same model to the same numbers until the deadline."""
    import time

    from transferlab.recipes.auto import Search, leaderboard

    config = load_run_config(None, backbone=str(tiny_bert_dir), strategies=["head"], training={"epochs": 2})
    lines: list[str] = []
    search = Search(tmp_path, config, ["head"], 3600, None, time.time(), lines.append)
    first = search.next_trial()
    search.complete(first[0], 0.7, 1.0, None)
    assert search.next_trial() is None
    assert "every setting the search can propose has been tried: 1 trial(s), 1 complete" in lines[-1]
    assert [row["trial"] for row in leaderboard(search.study)] == [first[0]]  # the repeats were never trials
    (tmp_path / "failing").mkdir()
    failing = Search(tmp_path / "failing", config, ["head"], 3600, None, time.time(), lines.append)
    first = failing.next_trial()
    failing.fail(first[0], "ValueError: bad", 1.0)
    with pytest.raises(UserError, match="the first 1 trials all failed \\(the first: ValueError: bad\\)"):
        failing.next_trial()  # every setting tried and none complete: nothing to export


@pytest.mark.parametrize("labelled, draws, kept", [(600, [50, 56], 51), (160, [50], 45)])
def test_validation_that_near_copies_left_is_drawn_again_larger(labelled, draws, kept, monkeypatch):
    """A tenth of each validation split nearly copies a test input and leaves it: auto draws again, larger by that
    share, unless that would take more than a third of the examples."""
    from types import SimpleNamespace

    from transferlab.recipes import auto as auto_module

    asked = []

    def prepare(config, log):
        drawn = round(config.val_fraction * labelled)
        asked.append(drawn)
        return SimpleNamespace(split=SimpleNamespace(val=list(range(drawn - drawn // 10))))

    monkeypatch.setattr(auto_module, "prepare", prepare)
    config = load_run_config(None)
    experiment = auto_module._prepare_with_validation(config, labelled, log=lambda _: None)
    assert asked == draws and len(experiment.split.val) == kept
