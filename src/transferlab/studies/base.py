"""A study: one classic transfer-learning experiment as a list of points repeated over seeds.

Each point is a strategy with its settings (and, where the study varies them, a data size or a backbone).
It runs through compare's machinery (`prepare`, `run_strategy`, `aggregate_runs`) and lands in
results.json as one row of `strategies`, keyed by the point's label, so the comparison table and the
report need no study-specific code. `study` in results.json holds each point's x value, its
validation-loss curves, and whether the expected result held, in a sentence with the numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from transferlab.config import RunConfig
from transferlab.errors import UserError
from transferlab.evaluation.stats import compare_to_best, fold_overlap, gap_within_noise, one_test_set
from transferlab.recipes.experiment import (
    Experiment,
    Job,
    open_run_folder,
    prepare,
    run_job,
    run_record,
    summarize_runs,
    write_label_issues,
)
from transferlab.recipes.run_folder import RunFolder, job_name
from transferlab.settings import MAX_VALIDATION_SHARE, MIN_VALIDATION, validation_fraction

Log = Callable[[str], None]


@dataclass
class Point:
    """One setting of a study: a row of its table and a point of its plot."""

    label: str  # row name, and the folder name under strategies/
    x: float | str  # position on the study's plot
    strategy: str
    settings: dict[str, Any] = field(default_factory=dict)  # the strategy's settings (lr, r, layer_decay ...)
    series: str = ""  # the line of the plot the point belongs to (learning-curve: one per strategy)
    run: dict[str, Any] = field(default_factory=dict)  # RunConfig overrides: n_train, backbone
    training: dict[str, Any] = field(default_factory=dict)  # TrainingConfig overrides: epochs, evals_per_epoch, patience


@dataclass(frozen=True)
class Budget:
    """A study's data and training budget: `--quick` (one seed, under 10 minutes on 2 cores) or full."""

    n_train: int
    n_test: int
    epochs: float = 3
    max_length: int = 64
    seeds: int = 3


Outcome = tuple[Point, list[dict[str, Any]], list[list[dict[str, Any]]]]  # point, per-run results, per-run log histories


class Study(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    expected_result: ClassVar[str]  # what the literature leads one to expect, with its source where there is one
    x_label: ClassVar[str]
    log_x: ClassVar[bool] = False
    full: ClassVar[Budget] = Budget(n_train=1000, n_test=1000)
    quick: ClassVar[Budget] = Budget(n_train=400, n_test=500, epochs=2, seeds=1)
    fixed_backbone: ClassVar[bool] = False  # the study chooses its backbones itself
    panel: ClassVar[str | None] = None  # the plot's second panel: "validation-loss" curves, or "forgetting" against x

    def budget(self, quick: bool) -> Budget:
        return self.quick if quick else self.full

    @abstractmethod
    def points(self, quick: bool) -> list[Point]:
        """The settings to run, in plot order."""

    @abstractmethod
    def expectation(self, results: dict[str, Any]) -> tuple[bool | None, str]:
        """Whether the expected result held on these results (None: cannot tell), and why, with numbers."""

    def deciding_pair(self, results: dict[str, Any]) -> tuple[str, str] | None:
        """The two points whose difference the verdict rests on, when it rests on one: if that difference is within
        noise, the study reports "within noise" rather than held or not held."""
        return None

    def configure(self, config: RunConfig) -> None:
        """Settings every point shares beyond the budget (the forgetting meter), set on the base config."""
        return None

    def check(self, config: RunConfig) -> None:
        """Fail before any work when the study cannot run (a missing large asset)."""
        return None

    def run_points(self, context: StudyContext, points: list[Point], log: Log) -> Iterator[Outcome]:
        """Each point x seed through `run_strategy`, as `compare` runs a strategy; runs that finished
        before (an interrupted study run again) are read back."""
        for point in points:
            experiment = context.experiment(point)
            results, histories = [], []
            for seed in experiment.seeds():
                done = context.finished(point, seed)
                if done is None:  # a run that fails is recorded as failed, and the study goes on
                    outcome = run_job(experiment, Job(point.strategy, 0, seed), context.folder.workdir(point.label, 0, seed))
                    done = outcome.result, outcome.log_history
                results.append(done[0])
                histories.append(done[1])
            yield point, results, histories


class StudyContext:
    """Prepares (loads, splits, tokenises) once per backbone and data size; points share it."""

    def __init__(self, base: RunConfig, log: Log):
        self.base, self.log = base, log
        self.folder: RunFolder  # opened by `run_study` once the first point's files are read
        self._prepared: dict[tuple[str, int | None], Experiment] = {}

    def config(self, point: Point) -> RunConfig:
        base = self.base
        config = dataclasses.replace(
            base,
            strategies=[point.strategy],
            strategy_settings={point.strategy: dict(point.settings)} if point.settings else {},
            training=dataclasses.replace(base.training, **point.training),
            **point.run,
        )
        config.validate()
        return config

    def experiment(self, point: Point) -> Experiment:
        config = self.config(point)
        key = (config.backbone, config.n_train)
        if key not in self._prepared:
            self._prepared[key] = prepare(config, self.log)
            if self.base.training.metric is None:  # prepare chose the headline metric from the class balance
                self.base.training.metric = config.training.metric
        config.training.metric = self.base.training.metric
        prepared = self._prepared[key].config  # what prepare made of "auto" holds for every point on these data
        if config.training.precision == "auto":
            config.training.precision = prepared.training.precision
        if config.class_weights == "auto":
            config.class_weights = prepared.class_weights
        return dataclasses.replace(self._prepared[key], config=config)

    def finished(self, point: Point, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """A run's result and log history, when an earlier attempt at this study finished it."""
        from transferlab.distributed import broadcast, is_main_process

        result = broadcast(self.folder.finished_result(point.label, 0, seed) if is_main_process() else None)
        if result is None:
            return None
        log = self.folder.path / "strategies" / point.label / f"log-{job_name(0, seed)}.jsonl"
        lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
        return result, [json.loads(line) for line in lines if line.strip()]

    def save(self, point: Point, seed: int, result: dict[str, Any], history: list[dict[str, Any]]) -> None:
        from transferlab.distributed import is_main_process

        if is_main_process() and result.get("status") == "ok":
            self.folder.save_run(point.label, 0, seed, result, history)


STUDIES: dict[str, type[Study]] = {}


def register_study(cls: type[Study]) -> type[Study]:
    """Class decorator: the study under its name, in import order (`studies/__init__.py`)."""
    assert STUDIES.setdefault(cls.name, cls) is cls, f"study '{cls.name}' is registered twice"
    return cls


def get_study(name: str) -> Study:
    if name not in STUDIES:
        close = difflib.get_close_matches(name, STUDIES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown study '{name}'{hint} (known: {', '.join(STUDIES)})")
    return STUDIES[name]()


def study_config(
    study: Study,
    quick: bool,
    backbone: str | None = None,
    dataset: str | None = None,
    seeds: int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    epochs: float | None = None,
    data_files: dict[str, str | None] | None = None,
    base: RunConfig | None = None,
) -> RunConfig:
    """`data_files`: text_column, label_column, test_dataset and validation_dataset, where given.

    The base run config: `base` (a --config file's run config; the defaults without one), the study's budget
    over it, then the caller's overrides; one hold-out split, repeated over seeds."""
    if backbone and study.fixed_backbone:
        raise UserError(f"{study.name} chooses its backbones itself; --backbone does not apply")
    budget = study.budget(quick)
    config = copy.deepcopy(base) if base is not None else RunConfig()
    config.n_train = n_train or budget.n_train
    if study.panel == "validation-loss" and config.n_train * config.val_fraction < MIN_VALIDATION <= config.n_train * MAX_VALIDATION_SHARE:
        config.val_fraction = validation_fraction(MIN_VALIDATION, config.n_train)  # enough to draw its validation curves
    config.n_test = n_test or budget.n_test
    config.max_length = budget.max_length
    config.cv = 1
    config.seeds = seeds or budget.seeds
    config.training.epochs = epochs or budget.epochs
    if backbone:
        config.backbone = backbone
    if dataset:
        config.dataset = dataset
    for key, value in (data_files or {}).items():
        if value is not None:
            setattr(config, key, value)
    study.configure(config)
    config.validate()
    return config


def run_study(
    study: Study, config: RunConfig, out_dir: Path, quick: bool = False, log: Log = print, resume: bool | None = None
) -> dict[str, Any]:
    """Every point x seed, then results.json (atomically) and the report beside it. The run folder is
    compare's (`recipes/run_folder.py`): each point is a strategy there, and an interrupted study resumes."""
    from transferlab.distributed import is_main_process
    from transferlab.report import write_report

    study.check(config)
    points = study.points(quick)
    context = StudyContext(config, log)
    # The first point's files are read before the folder opens: a resume over edited files is refused, as compare's is.
    folder = context.folder = open_run_folder(out_dir, config, resume, log, context.experiment(points[0]), f"study {study.name}")
    record: dict[str, Any] | None = None
    entries = []
    for point, results, histories in study.run_points(context, points, log):
        if record is None:
            experiment = context.experiment(point)  # the first point's data: its checks stand for the study's
            record = run_record(experiment, f"study {study.name}")
            record["config"]["strategies"] = sorted({p.strategy for p in points})
        for result, history in zip(results, histories):
            context.save(point, result.get("seed", 0), result, history)
        record["strategies"][point.label] = summary = summarize_runs(results)
        entries.append(
            {
                "label": point.label,
                "x": point.x,
                "series": point.series,
                "strategy": point.strategy,
                "settings": point.settings,
                **point.run,
                **point.training,
                "curves": [loss_curves(h) for h in histories],
            }
        )
        metric = record["primary_metric"]
        if summary["status"] == "ok":
            m = summary["metrics"][metric]
            log(f"{point.label}: test {metric} {m['mean']:.4f} ± {m['std']:.4f} over {len(m['values'])} run(s)")
        else:
            log(f"{point.label}: {summary['status']}: {summary.get('reason', '')}")
    assert record is not None, "a study has at least one point"
    record["comparison"] = compare_to_best(record["strategies"], record["primary_metric"], one_test_set(record), fold_overlap(record))
    record["study"] = {
        "name": study.name,
        "summary": study.summary,
        "quick": quick,
        "x_label": study.x_label,
        "log_x": study.log_x,
        "panel": study.panel,
        "expected_result": study.expected_result,
        "points": entries,
    }
    expectation = record["study"]["expectation"] = judge(study, record)
    log(f"{study.name}: {expectation['outcome']}: {expectation['verdict']}")
    if is_main_process():
        write_label_issues(out_dir, experiment)
        folder.complete(record)
        write_report(out_dir, record)
    return record


def loss_curves(history: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """[step, epoch, value] of the training and validation loss, from a Trainer log history."""
    curves: dict[str, list[list[float]]] = {"loss": [], "eval_loss": []}
    for entry in history:
        for key in curves:
            if key in entry and "step" in entry:
                curves[key].append([float(entry["step"]), float(entry.get("epoch", 0.0)), float(entry[key])])
    return curves


# --------------------------------------------------------------------------- helpers for expectations


def point_entries(results: dict[str, Any]) -> list[dict[str, Any]]:
    return results["study"]["points"]


def score(results: dict[str, Any], label: str, metric: str | None = None) -> float:
    """Mean test metric of a point (NaN when it did not run)."""
    summary = results["strategies"].get(label, {})
    if summary.get("status") != "ok":
        return float("nan")
    return float(summary["metrics"][metric or results["primary_metric"]]["mean"])


def judge(study: Study, record: dict[str, Any]) -> dict[str, Any]:
    """The study's verdict with the noise test compare uses: held, did not hold, within noise (when the difference
    the verdict rests on could be chance), or undecided."""
    held, verdict = study.expectation(record)
    outcome = {True: "held", False: "did not hold", None: "undecided"}[held]
    pair = study.deciding_pair(record) if held is not None else None
    if pair and all(record["strategies"].get(label, {}).get("status") == "ok" for label in pair):
        a, b = (record["strategies"][label] for label in pair)
        shared_test = one_test_set(record) is not None
        noise, test = gap_within_noise(a, b, record["primary_metric"], record["n_test"], shared_test, fold_overlap(record))
        verdict += f"; {pair[0]} against {pair[1]}: {test}"
        outcome = "within noise" if noise else outcome
    return {"held": held, "outcome": outcome, "verdict": verdict}


def score_text(results: dict[str, Any], label: str) -> str:
    summary = results["strategies"].get(label, {})
    if summary.get("status") != "ok":
        return "n/a"
    m = summary["metrics"][results["primary_metric"]]
    return f"{m['mean']:.3f}" + (f" ± {m['std']:.3f}" if len(m["values"]) > 1 else "")


def rise_after_minimum(curve: list[tuple[float, float, float]]) -> tuple[float, float, float, float] | None:
    """(first value, minimum, step of the minimum, highest value after it) of a mean curve; None if too short."""
    if len(curve) < 2:
        return None
    values = [v for _, _, v in curve]
    low = int(np.argmin(values))
    return values[0], values[low], curve[low][0], max(values[low:])
