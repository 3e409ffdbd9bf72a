"""A finished run's record (results.json), the views a notebook wants and the text the report shows of it.

pandas only, no torch: the report and a notebook read results without loading a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import pandas as pd

from transferlab.errors import UserError
from transferlab.runio import CONFIG, RESULTS


class MeanStd(TypedDict):
    mean: float
    std: float


class RunResult(TypedDict, total=False):
    """One strategy on one fold and seed (also what a run folder keeps per job)."""

    status: str  # ok, skipped, failed or diverged
    reason: str  # why a run is not ok
    fold: int
    seed: int
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]
    train_seconds: float
    peak_memory_mb: float
    forgetting: dict[str, Any]  # the meter's reading before and after
    head_layer: str  # a choice the strategy made and reports (evaluation/stats.py: REPORTED_CHOICES)
    # temperature, ece_uncalibrated, brier_uncalibrated, and the reliability bins before and after
    # (evaluation/calibration.py); metrics' ece and brier are the calibrated ones
    calibration: dict[str, Any]
    decision_threshold: float  # binary: class 1 when its probability reaches this (tuned on validation)


class StrategySummary(TypedDict, total=False):
    """A strategy's runs and their mean ± std: one row of the table."""

    status: str
    reason: str
    runs: list[RunResult]
    metrics: dict[str, MeanStd]
    trainable_params: int
    trainable_params_without_head: int
    trainable_percent: float
    total_params: int
    train_seconds: float
    peak_memory_mb: float
    forgetting: dict[str, Any]
    settings: dict[str, Any]  # the strategy's resolved settings
    confusion_matrix: list[list[int]]  # summed over the runs
    calibration: dict[str, MeanStd]  # temperature, ece_uncalibrated, brier_uncalibrated over the runs
    decision_threshold: MeanStd


class Comparison(TypedDict):
    """The best strategy by the headline metric, and each other's paired gap to it (`within_noise` by a t-test)."""

    metric: str
    best: str
    test: str
    others: dict[str, dict[str, Any]]  # gap, p_value, within_noise


class ResultsRecord(TypedDict, total=False):
    """results.json, as compare, train, study and forgetting write it."""

    command: str
    status: str  # running until the run completes
    created: str
    finished: str
    backbone: str
    dataset: str
    label_names: list[str]
    class_counts: list[dict[str, dict[str, int]]]  # per split: train, val and test counts by class
    primary_metric: str
    evaluation: dict[str, Any]  # folds, seeds, what the test examples are
    n_train: int
    n_fit: int
    n_val: int
    n_test: int
    seed: int
    strategies: dict[str, StrategySummary]
    comparison: Comparison
    config: dict[str, Any]  # the resolved run config
    environment: dict[str, Any]  # package versions, device
    training_precision: str  # what training steps computed in here (fp32, bf16, fp16), `auto` resolved
    assets: dict[str, Any]  # the hashes of every file the run read
    data_checks: dict[str, Any]
    recommendation: dict[str, Any]
    study: dict[str, Any]  # for a study: its points and whether the expected result held
    model_dir: str  # train: the exported model's folder, relative to the run folder


def load_results(directory: Path) -> ResultsRecord:
    """A finished run's results.json; an unfinished or missing run is one clear line."""
    path = Path(directory) / RESULTS
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if (Path(directory) / CONFIG).is_file():
            raise UserError(f"{directory}: the run did not finish (no {RESULTS}); run its command again to resume it") from None
        raise UserError(f"{path} does not exist: give the folder of a finished compare, train or study run") from None
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read results: {err}") from None
    if results.get("status") != "complete":
        raise UserError(f"{path}: the run did not finish; run its command again to resume it")
    return results


@dataclass
class Results:
    """What `compare`, `train` and `study` wrote: `record` is results.json as a dict, `folder` the run folder."""

    record: ResultsRecord
    folder: Path | None = None

    @classmethod
    def read(cls, folder: Path | str) -> Results:
        return cls(load_results(Path(folder)), Path(folder))

    @property
    def metric(self) -> str:
        """The headline metric the strategies are ranked by."""
        return self.record["primary_metric"]

    @property
    def best(self) -> str | None:
        return self.record.get("comparison", {}).get("best")

    @property
    def data_checks(self) -> dict[str, Any] | None:
        return self.record.get("data_checks")

    def to_pandas(self) -> pd.DataFrame:
        """One row per strategy, ranked by the headline metric: every metric's mean and std over the runs, the gap
        to the best and whether it is within noise, trainable parameters, seconds and peak memory."""
        comparison = self.record.get("comparison", {})
        rows = []
        for name, summary in self.record["strategies"].items():
            row: dict[str, Any] = {"strategy": name, "status": summary["status"]}
            if summary["status"] == "ok":
                for metric, value in summary["metrics"].items():
                    row[metric], row[f"{metric}_std"] = value["mean"], value["std"]
                other = comparison.get("others", {}).get(name, {})
                row["gap_to_best"] = 0.0 if name == comparison.get("best") else other.get("gap")
                row["within_noise"] = other.get("within_noise")
                for key in ("trainable_params", "total_params", "train_seconds", "peak_memory_mb"):
                    row[key] = summary[key]
            else:
                row["reason"] = summary.get("reason")
            rows.append(row)
        table = pd.DataFrame(rows).set_index("strategy")
        if self.metric in table:
            table = table.sort_values(self.metric, ascending=False, na_position="last")
        return table


# What each forgetting meter's drift (`evaluation/forgetting_meter.py: drift`) measures, for a plot's axis.
DRIFT_LABEL = {"perplexity": "relative perplexity rise", "cka": "1 - mean CKA to the pretrained layers", "sequential": "task A points lost"}


def format_forgetting(summary: dict[str, Any] | None) -> str:
    """The compare table's forgetting cell."""
    if not summary:
        return ""
    if summary["meter"] == "perplexity":
        before, after = summary["before"]["mean"], summary["after"]["mean"]
        return f"ppl {before:.1f} -> {after:.1f} ({100 * (after / before - 1):+.0f}%)"
    if summary["meter"] == "sequential":
        return f"task A {summary['before']['mean']:.3f} -> {summary['after']['mean']:.3f}"
    return f"CKA {summary['after']['mean']:.4f}"


def describe_settings(settings: dict[str, Any]) -> str:
    """A trial's or strategy's settings on one line: 'lr 0.0003, r 16'."""
    return ", ".join(f"{key} {value:.2g}" if isinstance(value, float) else f"{key} {value}" for key, value in settings.items())


def ranked_trials(search: dict[str, Any]) -> list[dict[str, Any]]:
    """`auto`'s trials, the best validation score first, the trials without one (failed) last."""
    return sorted(search["trials"], key=lambda r: (r["validation"] is None, -(r["validation"] or 0.0), r["trial"]))
