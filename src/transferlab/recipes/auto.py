"""`transferlab auto`: the best model the data and a time budget allow, chosen on validation, tested once.

Read top to bottom: the recommendation and the data checks, as for compare; one hold-out split. Then a search
over strategies x learning rate (x rank or bottleneck width) with Optuna (TPE sampler, Hyperband pruner):
- the strategies that fit a head on cached frozen features go first: they cost seconds and set the floor;
- then the recommended strategy, then every other one, each once at its own defaults, so each gets a look;
- then TPE's proposals, which concentrate on the strategies and rates that did best.
Each trained trial reports its best validation metric so far at every evaluation; Hyperband's successive halving
stops those that fall behind (not gradual unfreezing, whose first stage trains the head alone: it is judged at its
end); at the budget the trial in flight stops at its next evaluation (at its best checkpoint, a candidate like a
finished trial), and a trial at the metric's maximum (1.0) ends
the search, as no other can beat it. Trials all train with the run's seed, so they differ by their settings only.
The test set is read once, by the winner (and by its reruns with other seeds when --seeds asks for them). The search
is an Optuna journal in the run folder: an interrupted auto carries on where it stopped, and runs the trial it was in
again. With `--executor ray` the same search hands trials to Ray workers that train side by side
(recipes/executors.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from transferlab.config import DEFAULT_STRATEGIES, RunConfig
from transferlab.errors import TrainingDiverged, UserError
from transferlab.evaluation.calibration import probabilities, validation_metrics
from transferlab.evaluation.stats import compare_to_best
from transferlab.recipes.executors import RayExecutor, Sequential
from transferlab.recipes.experiment import (
    Experiment,
    FittedRun,
    Log,
    StrategyRun,
    fit_strategy,
    measure,
    open_run_folder,
    prepare,
    run_record,
    run_strategy,
    summarize_runs,
    write_label_issues,
)
from transferlab.recipes.run_folder import RunFolder
from transferlab.recipes.train import check_export_formats, export, write_export_formats
from transferlab.report import write_report
from transferlab.results import describe_settings, ranked_trials
from transferlab.runio import MODEL_DIR, atomic_write_text
from transferlab.settings import MAX_VALIDATION_SHARE, MIN_VALIDATION, validation_fraction
from transferlab.strategies import Strategy
from transferlab.training.loop import validation_logits

SEARCH_JOURNAL = "search.journal"
LEADERBOARD = "leaderboard.csv"
LR_RANGE = 3.0  # each strategy's learning rate is searched within its default / 3 to its default x 3, log-uniform
WIDTH_FACTORS = (0.5, 1, 2)  # a rank or bottleneck width r: r / 2, r or 2 r
STUDY = "auto"
INTERRUPTED = "interrupted: queued again"  # a trial the process died in; a resumed search runs it again
GIVE_UP_AFTER = 10  # trials that all failed before any completed: the data or the backbone is at fault, not the settings
# TPE's proposals in a row that repeat a trial before the search counts its space as exhausted: with nothing or little
# to tune (the head alone, or a fixed --lr) every proposal would train a trial already trained, to the same numbers
REPEATS_TO_STOP = 10
# Every headline metric is at most 1. A trial that reaches it on validation cannot be outscored (ties go to the earlier
# trial), so the search ends there: on bbc-news (94 validation articles) four more trials of the same strategy at
# nearly the same rate, 7 minutes of a 37-minute budget, followed a perfect score and could not change the winner.
METRIC_MAXIMUM = 1.0


def parse_budget(text: str) -> float:
    """'20m', '90s', '1h30m' or a bare number of minutes, in seconds."""
    text = text.strip().lower()
    parts = re.fullmatch(r"(\d+(?:\.\d+)?)|(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?", text)
    if parts is None or not any(parts.groups()):
        raise UserError(f"--budget: cannot read '{text}': write it as 20m, 90s, 1h30m or a number of minutes")
    bare, hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = bare * 60 + hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise UserError("--budget must be more than zero")
    return total


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Which strategies the search tries, in the order of their first look, and what it tunes for each."""

    strategies: list[str]
    config: RunConfig

    def tuned(self, name: str) -> dict[str, Any]:
        """The settings a trial of `name` draws, with their defaults: the learning rate (unless the run fixes one
        for all) and a LoRA rank or adapter bottleneck width."""
        defaults = self.config.strategy(name).config
        tuned: dict[str, Any] = {}
        if hasattr(defaults, "lr") and self.config.training.lr is None:
            tuned["lr"] = defaults.lr
        if isinstance(getattr(defaults, "r", None), int):
            tuned["r"] = defaults.r
        return tuned

    def first_look(self, name: str) -> dict[str, Any]:
        """The parameters that make a trial `name` at its defaults (for `Study.enqueue_trial`)."""
        return {"strategy": name, **{f"{name}.{key}": value for key, value in self.tuned(name).items()}}

    def suggest(self, trial: optuna.Trial) -> tuple[str, dict[str, Any]]:
        name = trial.suggest_categorical("strategy", self.strategies)
        settings: dict[str, Any] = {}
        for key, default in self.tuned(name).items():
            if key == "lr":
                settings[key] = trial.suggest_float(f"{name}.lr", default / LR_RANGE, default * LR_RANGE, log=True)
            else:
                settings[key] = trial.suggest_categorical(f"{name}.{key}", sorted({max(1, int(default * f)) for f in WIDTH_FACTORS}))
        return name, settings


def auto(
    config: RunConfig,
    out_dir: Path,
    budget_seconds: float,
    log: Log = print,
    resume: bool | None = None,
    max_trials: int | None = None,
    formats: Sequence[str] = (),
    executor: Sequential | RayExecutor | None = None,
) -> dict[str, Any]:
    """Search, test the winner once, export it (DIR/model, and DIR/<format> for each of `formats`). `executor` says where
    the trials train: one after another in this process (the default), or side by side on Ray workers."""
    from transferlab.recipes.recommend import recommend_for_run

    since = time.time()  # wall-clock, so that workers on other machines keep the same deadline
    config.cv = 1  # one model to export, chosen on a validation split and tested on a hold-out split
    check_export_formats(formats, None, config)
    experiment = prepare(config, log)
    labelled = len(experiment.split.train) + len(experiment.split.val)
    recommendation = recommend_for_run(config, labelled, log)
    if (
        len(experiment.split.val) < MIN_VALIDATION
        and config.validation_dataset is None
        and MIN_VALIDATION <= labelled * MAX_VALIDATION_SHARE
    ):
        log(f"auto: {MIN_VALIDATION} of the {labelled} labelled examples validate (not {len(experiment.split.val)}): enough to choose by")
        experiment = _prepare_with_validation(config, labelled, log)
    if len(experiment.split.val) < MIN_VALIDATION:
        if config.validation_dataset is not None:
            raise UserError(
                f"auto chooses on the validation split, and --validation-dataset's {len(experiment.split.val)} examples are too "
                f"few to choose by (at least {MIN_VALIDATION})"
            )
        return _without_search(experiment, out_dir, budget_seconds, recommendation, resume, formats, log)
    folder = open_run_folder(out_dir, config, resume, log, experiment, "auto")
    strategies, left_out = _search_order(experiment, recommendation["strategy"], formats, log)
    open_search = functools.partial(Search, out_dir, config, strategies, budget_seconds, max_trials, since)
    kept = (executor or Sequential()).search(experiment, open_search, search_trials, log)
    study = _load_study(out_dir)
    winner = study.best_trial
    name, settings = winner.params["strategy"], winner.user_attrs["settings"]
    log(f"winner: {name}{_describe(settings)}, validation {config.training.metric} {winner.value:.4f}; testing it")
    final = dataclasses.replace(experiment, config=_with_settings(config, name, settings))
    first, results = _test_winner(final, folder, kept.fitted if kept is not None and kept.number == winner.number else None)
    search = {
        "budget_seconds": budget_seconds,
        "seconds": study.user_attrs["seconds"],
        "decided_by": study.user_attrs.get("decided_by"),  # the trial at the metric's maximum that ended the search early
        "metric": config.training.metric,
        "validation_examples": len(experiment.split.val),
        "strategies": strategies,
        "left_out": left_out,
        "winner": {"trial": winner.number, "strategy": name, "settings": settings, "validation": winner.value},
        "trials": leaderboard(study),
    }
    verdict = _verdict(recommendation["strategy"], search)
    return _finish(experiment, final, folder, first, results, search, {**recommendation, "verdict": verdict}, out_dir, formats, log)


def _prepare_with_validation(config: RunConfig, labelled: int, log: Log) -> Experiment:
    """The data prepared with a validation split of MIN_VALIDATION examples. The split is drawn before the data checks,
    and validation examples that nearly copy a test input leave it then, so a split aimed at exactly MIN_VALIDATION can
    come out short: the next try aims higher by the share that left, within MAX_VALIDATION_SHARE of the examples."""
    wanted = MIN_VALIDATION
    for _ in range(3):
        config.val_fraction = validation_fraction(wanted, labelled)
        experiment = prepare(config, log)
        kept = len(experiment.split.val)
        more = math.ceil(wanted * MIN_VALIDATION / kept) if kept else 0
        if kept >= MIN_VALIDATION or not kept or more > labelled * MAX_VALIDATION_SHARE:
            break
        log(f"auto: {wanted - kept} of {wanted} validation examples nearly copied test inputs and left; drawing {more}")
        wanted = more
    return experiment


def _without_search(
    experiment: Experiment,
    out_dir: Path,
    budget_seconds: float,
    recommendation: dict[str, Any],
    resume: bool | None,
    formats: Sequence[str],
    log: Log,
) -> dict[str, Any]:
    """Too few labelled examples to spare a validation split that can tell strategies apart (one example is two
    points and more): no search can choose there, so auto trains the recommended strategy, whose rules rest on
    measurements at this size (SetFit's pairs up to 128 examples per class), on every labelled example, and tests it
    once."""
    config = experiment.config
    name = recommendation["strategy"]
    reason = (
        f"{len(experiment.split.val)} validation examples are too few to choose by (at least {MIN_VALIDATION}); "
        f"no search: the recommended {name} was trained"
    )
    from transferlab.backbones import build_classifier

    model = build_classifier(experiment.backbone, experiment.label_names, config.pooling)
    left_out = _left_out_because(config.strategy(name), model, formats, chosen_on_validation=False)
    if name not in config.strategies or left_out:
        why = left_out or f"it is not among --strategies {','.join(config.strategies)}"
        raise UserError(
            f"auto: {len(experiment.split.val)} validation examples are too few to search on, and the recommended {name} cannot be trained instead: {why}"
        )
    log(f"auto: {reason}")
    folder = open_run_folder(out_dir, config, resume, log, experiment, "auto")
    final = dataclasses.replace(experiment, config=_with_settings(config, name, {}))
    first, results = _test_winner(final, folder, None)
    search = {
        "budget_seconds": budget_seconds,
        "seconds": 0.0,
        "metric": config.training.metric,
        "validation_examples": len(experiment.split.val),
        "strategies": [name],
        "winner": {"trial": None, "strategy": name, "settings": {}, "validation": None},
        "trials": [],
        "none_because": reason,
    }
    return _finish(experiment, final, folder, first, results, search, {**recommendation, "verdict": reason}, out_dir, formats, log)


def _finish(
    experiment: Experiment,
    final: Experiment,
    folder: RunFolder,
    first: StrategyRun,
    results: list[dict[str, Any]],
    search: dict[str, Any],
    recommendation: dict[str, Any],
    out_dir: Path,
    formats: Sequence[str],
    log: Log,
) -> dict[str, Any]:
    """The winner's record, export, leaderboard (when there was a search) and report."""
    name = final.config.strategies[0]
    record = run_record(final, "auto")
    record["strategies"][name] = summarize_runs(results)
    record["comparison"] = compare_to_best(record["strategies"], final.config.training.metric)
    record["search"] = search
    record["recommendation"] = recommendation
    record["model_dir"] = MODEL_DIR
    export(first, final, out_dir / MODEL_DIR, False, record)
    write_label_issues(out_dir, experiment)
    if search["trials"]:
        _write_leaderboard(out_dir, search)
    folder.complete(record)
    write_report(out_dir, record)
    write_export_formats(out_dir, formats, log)
    return record


def _search_order(experiment: Experiment, recommended: str, formats: Sequence[str], log: Log) -> tuple[list[str], dict[str, str]]:
    """The strategies that apply to this backbone (and export as asked): those that fit a head on frozen features
    first (seconds), then the recommended one, then the usual comparison, then the rest as registered; and why each
    of the others is left out."""
    from transferlab.backbones import build_classifier

    config = experiment.config
    model = build_classifier(experiment.backbone, experiment.label_names, config.pooling)
    usable, left_out = [], {}
    for name in config.strategies:
        reason = _left_out_because(config.strategy(name), model, formats)
        if reason:
            log(f"auto leaves out {name}: {reason}")
            left_out[name] = reason
        else:
            usable.append(name)
    if not usable:
        raise UserError(f"none of the strategies {', '.join(config.strategies)} applies to {config.backbone}")

    def rank(name: str) -> tuple[bool, bool, bool, int]:
        return (config.strategy(name).trains_backbone, name != recommended, name not in DEFAULT_STRATEGIES, config.strategies.index(name))

    return sorted(usable, key=rank), left_out


def _left_out_because(strategy: Strategy, model: Any, formats: Sequence[str], chosen_on_validation: bool = True) -> str | None:
    if reason := strategy.unsupported_reason(model):
        return reason
    if chosen_on_validation and not strategy.validation_is_held_out:
        return "it learns from the validation labels, so its validation score would flatter it"
    if not strategy.merges and set(formats) - {"hf"}:
        return "its virtual tokens do not merge into one model to export"
    if "sentence-transformers" in formats and (refusal := strategy.sentence_transformers_refusal()):
        return refusal
    return None


def _open_study(out_dir: Path, config: RunConfig, space: SearchSpace) -> tuple[optuna.Study, float]:
    """The run folder's search journal, and the seconds the search spent before this call. A trial that an
    interruption left running is recorded as failed and queued again."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _journal(out_dir)
    per_epoch, evaluations = config.training.evals_per_epoch, planned_evaluations(config)
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY,
        direction="maximize",
        # with trials in flight side by side, TPE counts each as scoring the worst so far, so it does not propose it again
        sampler=optuna.samplers.TPESampler(seed=config.training.seed, constant_liar=True),
        # No trial is judged before a full epoch: after half of one, a strategy that starts from a fitted head (LP-FT)
        # is far ahead of one whose head is still random, whatever either reaches in the end.
        pruner=optuna.pruners.HyperbandPruner(min_resource=min(per_epoch, evaluations), max_resource=evaluations, reduction_factor=3),
        load_if_exists=True,
    )
    if not study.trials:
        study.set_user_attr("strategies", space.strategies)
        for name in space.strategies:
            study.enqueue_trial(space.first_look(name))
    searched = study.user_attrs.get("strategies", space.strategies)
    if searched != space.strategies:  # Optuna refuses a categorical whose choices change within a study
        raise UserError(
            f"{out_dir} holds a search over {', '.join(searched)}, and this run would search {', '.join(space.strategies)} "
            "(other --strategies or --export-format); pass --restart, or the same options"
        )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        optuna.Trial(study, trial._trial_id).set_user_attr("reason", INTERRUPTED)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params)
    return study, float(study.user_attrs.get("seconds", 0.0))


def _journal(out_dir: Path) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(out_dir / SEARCH_JOURNAL)))


def _load_study(out_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=_journal(out_dir))


def planned_evaluations(config: RunConfig) -> int:
    """How many times a trial that runs to its end is evaluated on validation (besides a last one at its end)."""
    return max(1, round(config.training.epochs * config.training.evals_per_epoch))


class Search:
    """The study's side of the search: which trial comes next, whether a trial in flight goes on, what each scored.

    Trials are trained by `search_trials`, in this process or on Ray workers that reach one Search through a Ray actor
    (recipes/executors.py); either way every decision is made here, on the one journal, with the same rules."""

    def __init__(
        self, out_dir: Path, config: RunConfig, strategies: list[str], budget_seconds: float, max_trials: int | None, since: float, log: Log
    ):
        self.space = SearchSpace(strategies, config)
        self.study, spent_before = _open_study(out_dir, config, self.space)
        self.since = since - spent_before  # the search's clock runs on across interruptions
        self.deadline = self.since + budget_seconds
        self.max_trials, self.log = max_trials, log
        self.metric = config.training.headline_metric
        self.evaluations = planned_evaluations(config)
        self.in_flight: dict[int, optuna.Trial] = {}
        self.spent = False

    def next_trial(self) -> tuple[int, str, dict[str, Any]] | None:
        """The next trial's number, strategy and settings; None at the budget or at --max-trials, once a trial is
        complete (the head, usually, within seconds), once a trial reaches the metric's maximum, and once every
        setting the search proposes repeats a trial."""
        finished = [t for t in self._trials() if t.state.is_finished() and t.user_attrs.get("reason") != INTERRUPTED]
        complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete and len(finished) >= GIVE_UP_AFTER:
            self._give_up(finished)
        if complete and self.max_trials is not None and len(finished) + len(self.in_flight) >= self.max_trials:
            return None
        if (perfect := self._perfect(complete)) is not None:
            left = max(0.0, self.deadline - time.time())
            self._end(
                f"trial {perfect.number} reached the maximum validation {self.metric}, 1.0, which no later trial can beat: "
                f"the search stops with {left:.0f}s of its budget left",
                decided_by=perfect.number,
            )
            return None
        if complete and time.time() >= self.deadline:
            self._end(f"budget spent: {len(finished)} trial(s), {len(complete)} complete")
            return None
        tried = {
            (t.params["strategy"], repr(t.user_attrs["settings"]))
            for t in self._trials()
            if "settings" in t.user_attrs and t.user_attrs.get("reason") != INTERRUPTED  # that one is queued again
        }
        for _ in range(REPEATS_TO_STOP):
            trial = self.study.ask()
            name, settings = self.space.suggest(trial)
            if (name, repr(settings)) not in tried:
                trial.set_user_attr("settings", settings)
                self.in_flight[trial.number] = trial
                return trial.number, name, settings
            trial.set_user_attr("repeat", True)  # not trained, and left out of the leaderboard and the counts
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        if not complete and not self.in_flight:  # every setting failed: nothing to choose from
            self._give_up(finished)
        self._end(f"every setting the search can propose has been tried: {len(finished)} trial(s), {len(complete)} complete")
        return None

    @staticmethod
    def _give_up(finished: list[optuna.trial.FrozenTrial]) -> None:
        first = finished[0].user_attrs.get("reason", "no reason recorded")
        raise UserError(f"auto: the first {len(finished)} trials all failed (the first: {first}); leaderboard in {SEARCH_JOURNAL}")

    def _trials(self) -> list[optuna.trial.FrozenTrial]:
        """The study's trials, less the proposals that repeated an earlier one (never trained)."""
        return [t for t in self.study.get_trials(deepcopy=False) if not t.user_attrs.get("repeat")]

    def report(self, number: int, step: int, best_so_far: float) -> str | None:
        """Why the trial should stop at this evaluation (pruned, decided by another trial's perfect score, or the
        budget), or None to go on."""
        trial = self.in_flight[number]
        trial.report(best_so_far, step)
        if step >= self.evaluations:  # trained as planned: pruning it now would save nothing, but a strategy that
            # evaluates more often than planned (gradual unfreezing's stages) still stops at the budget
            return "budget" if step > self.evaluations and time.time() >= self.deadline else None
        if trial.should_prune() and self.space.config.strategy(trial.params["strategy"]).judged_mid_run:
            return "pruned"
        if self._perfect(self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) is not None:
            return "decided"  # a trial side by side with this one reached the maximum
        return "budget" if time.time() >= self.deadline else None

    def _end(self, message: str, **attributes: Any) -> None:
        """Say once why the search ended (and record `attributes` on the study), when no trial is left in flight."""
        if self.in_flight or self.spent:
            return
        self.spent = True
        for key, value in attributes.items():
            self.study.set_user_attr(key, value)
        self.log(message)

    @staticmethod
    def _perfect(complete: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
        """The first complete trial at the metric's maximum, if any."""
        return next((t for t in complete if t.value is not None and t.value >= METRIC_MAXIMUM), None)

    def complete(self, number: int, value: float, seconds: float, stopped: str | None) -> bool:
        """Record how a trial ended; True when it is a candidate to win. One the budget stopped is: it stopped at its
        best checkpoint, a model as real as any, so a trial that passed the others before the deadline is not lost,
        and the search ends with a candidate even when no trial could finish in the budget. Pruned trials fell behind,
        and one side by side with a perfect score cannot pass it: those are not."""
        trial = self.in_flight.pop(number)
        trial.set_user_attr("validation", value)
        how = f"validation {self.metric} {value:.4f} in {seconds:.0f}s"
        if stopped:
            trial.set_user_attr("stopped", stopped)
        if stopped and stopped != "budget":
            self._tell(trial, seconds, f"{how}, stopped ({stopped})", state=optuna.trial.TrialState.PRUNED)
            return False
        self._tell(trial, seconds, f"{how}, stopped by the budget at its best checkpoint" if stopped else how, value)
        return True

    def fail(self, number: int, reason: str, seconds: float) -> None:
        trial = self.in_flight.pop(number)
        trial.set_user_attr("reason", reason)
        self._tell(trial, seconds, reason, state=optuna.trial.TrialState.FAIL)

    def _tell(self, trial: optuna.Trial, seconds: float, how: str, value: float | None = None, state: Any = None) -> None:
        trial.set_user_attr("seconds", seconds)
        self.study.tell(trial, value, state=state)
        self.study.set_user_attr("seconds", time.time() - self.since)
        self.log(f"trial {trial.number}: {trial.params['strategy']}{_describe(trial.user_attrs['settings'])}: {how}")


@dataclasses.dataclass
class KeptModel:
    """The best model one worker fitted, kept in memory so that the winner need not be trained again."""

    number: int
    value: float
    fitted: FittedRun


def search_trials(experiment: Experiment, search: Search, keep: bool = True) -> KeptModel | None:
    """One worker: train the trials `search` hands out until it has none left; with `keep`, return the best
    complete one's model (the fitted model stays here; Ray workers drop theirs, and the winner is fitted again)."""
    kept = None
    while (task := search.next_trial()) is not None:
        done = _run_trial(experiment, search, *task)
        if keep and done is not None and (kept is None or done.value > kept.value):
            kept = done
    return kept


def _run_trial(experiment: Experiment, search: Search, number: int, name: str, settings: dict[str, Any]) -> KeptModel | None:
    """Train one trial, reporting each evaluation to the search, which may stop it; tell the search how it ended.
    Returns the model when the trial ran to its end."""
    config = _with_settings(experiment.config, name, settings)
    stopped: list[str] = []
    best_so_far, step = -math.inf, 0

    def on_evaluate(metrics: dict[str, float]) -> bool:
        nonlocal best_so_far, step
        best_so_far, step = max(best_so_far, metrics.get(f"eval_{config.training.metric}", -math.inf)), step + 1
        if reason := search.report(number, step, best_so_far):
            stopped.append(reason)
        return bool(stopped)

    started = time.perf_counter()
    try:
        fitted = fit_strategy(dataclasses.replace(experiment, config=config), name, on_evaluate=on_evaluate)
    except TrainingDiverged as err:
        return search.fail(number, f"diverged: {err}", time.perf_counter() - started)
    except Exception as err:  # one bad setting must not end the search; the reason goes to the leaderboard
        return search.fail(number, f"{type(err).__name__}: {str(err).strip()[:200]}", time.perf_counter() - started)
    if fitted.model is None:
        return search.fail(number, f"skipped: {fitted.skipped}", time.perf_counter() - started)
    logits = validation_logits(fitted.model, fitted.data, fitted.training.eval_batch_size)
    probs = probabilities(logits, multi_label=experiment.data.multi_label)
    labels = experiment.data.labels[experiment.split.val]
    value = float(validation_metrics(labels, probs, len(experiment.label_names), config.training.metric)[config.training.metric])
    candidate = search.complete(number, value, time.perf_counter() - started, stopped[0] if stopped else None)
    return KeptModel(number, value, fitted) if candidate else None


def _with_settings(config: RunConfig, name: str, settings: dict[str, Any]) -> RunConfig:
    chosen = {**config.strategy_settings.get(name, {}), **settings}
    return dataclasses.replace(config, strategies=[name], strategy_settings={name: chosen})


def _describe(settings: dict[str, Any]) -> str:
    return f" ({describe_settings(settings)})" if settings else ""


def _test_winner(final: Experiment, folder: RunFolder, fitted: FittedRun | None) -> tuple[StrategyRun, list[dict[str, Any]]]:
    """The winner on the test set, once per seed: the search's own model for the run's seed (refitted when the
    search was resumed after it), a fresh fit for each further seed (saved, so a resumed run reads it back).
    Returns the first seed's run (the model to export) and every seed's result."""
    name = final.config.strategies[0]
    first = measure(final, fitted) if fitted is not None else run_strategy(final, name)
    folder.save_run(name, 0, first.result["seed"], first.result, first.log_history)
    results = [first.result]
    for seed in final.seeds()[1:]:
        result = folder.finished_result(name, 0, seed)
        if result is None:
            run = run_strategy(final, name, workdir=folder.workdir(name, 0, seed), seed=seed)
            folder.save_run(name, 0, seed, run.result, run.log_history)
            result = run.result
        results.append(result)
    return first, results


def leaderboard(study: optuna.Study) -> list[dict[str, Any]]:
    """Every finished trial in order: its strategy and settings, how it ended, its validation score and time."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if not trial.state.is_finished() or trial.user_attrs.get("repeat"):
            continue
        stopped = trial.user_attrs.get("stopped")
        state = {"COMPLETE": stopped or "complete", "PRUNED": stopped or "pruned", "FAIL": "failed"}[trial.state.name]
        rows.append(
            {
                "trial": trial.number,
                "strategy": trial.params.get("strategy"),
                "settings": trial.user_attrs.get("settings", {}),
                "state": state,
                "validation": trial.user_attrs.get("validation"),
                "evaluations": len(trial.intermediate_values),
                "seconds": trial.user_attrs.get("seconds"),
                "reason": trial.user_attrs.get("reason"),
            }
        )
    return rows


def _verdict(recommended: str, search: dict[str, Any]) -> str:
    winner = search["winner"]["strategy"]
    if recommended == winner:
        return f"the recommended {recommended} won the search"
    looked = [row for row in search["trials"] if row["strategy"] == recommended and row["validation"] is not None]
    if reason := search["left_out"].get(recommended):
        return f"the recommended {recommended} was left out of the search ({reason}); {winner} won"
    if recommended not in search["strategies"]:
        return f"the recommended {recommended} was not among the strategies to search; {winner} won"
    if not looked:
        failed = [row for row in search["trials"] if row["strategy"] == recommended and row.get("reason")]
        if failed:
            return f"the recommended {recommended} failed ({failed[0]['reason']}); {winner} won"
        return f"the budget ran out before the recommended {recommended} was tried; {winner} won"
    best = max(row["validation"] for row in looked)
    return f"the recommended {recommended} reached {best:.4f} on validation; {winner} won with {search['winner']['validation']:.4f}"


def _write_leaderboard(out_dir: Path, search: dict[str, Any]) -> None:
    """leaderboard.csv: every trial, the best validation score first."""
    import pandas as pd

    table = pd.DataFrame([{**row, "settings": describe_settings(row["settings"])} for row in ranked_trials(search)])
    atomic_write_text(out_dir / LEADERBOARD, table.to_csv(index=False))
