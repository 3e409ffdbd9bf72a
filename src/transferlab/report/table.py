"""The comparison table printed at the end of `compare`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from transferlab.results import format_forgetting

SHOWN_METRICS = ("accuracy", "macro_f1", "auroc", "mcc")
# Multi-label runs also show what predicting the labels' training frequencies scores: the floor to beat.
BASELINE_METRIC = "prior_baseline_micro_f1"
# Expected calibration error and Brier score: before temperature scaling -> after (lower is better).
CALIBRATION_COLUMNS = ("ECE raw→T", "Brier raw→T")


def format_metric(entry: dict[str, float]) -> str:
    mean, std = entry["mean"], entry["std"]
    if mean != mean:  # NaN: undefined on this test set
        return "n/a"
    return f"{mean:.4f}" if std == 0 else f"{mean:.4f} ± {std:.4f}"


def shown_metrics(results: dict[str, Any]) -> list[str]:
    """The headline metric first, then the others every table shows, then the label-prior baseline where recorded."""
    primary = results.get("primary_metric", "accuracy")
    recorded = [r["metrics"] for r in results["strategies"].values() if r.get("status") == "ok"]
    baseline = [BASELINE_METRIC] if recorded and BASELINE_METRIC in recorded[0] else []
    return [primary] + [m for m in SHOWN_METRICS if m != primary] + baseline


def results_table(results: dict[str, Any]) -> Table:
    primary = results.get("primary_metric", "accuracy")
    metrics = shown_metrics(results)
    evaluation = results.get("evaluation", {"folds": 1, "seeds": [results.get("seed", 0)]})
    runs = evaluation["folds"] * len(evaluation["seeds"])
    comparison = results.get("comparison", {})
    over = f"{evaluation['folds']} folds x {len(evaluation['seeds'])} seed(s)" if runs > 1 else "one split"
    caption = f"mean ± std over {over}" + (f"; 'vs best': {comparison['test']}" if runs > 1 and comparison else "")
    sizes = (
        f"{results['n_train'] + results['n_test']} examples in {evaluation['folds']} folds"
        if evaluation["folds"] > 1
        else f"{results['n_train']} train, {results['n_test']} test"
    )
    table = Table(title=f"{results['backbone']} on {results['dataset']}: {sizes}", caption=caption)
    table.add_column("strategy")
    for metric in metrics:
        table.add_column(metric, justify="right")
    table.add_column("vs best")
    for column in CALIBRATION_COLUMNS + ("trainable", "%", "train s", "peak MB"):
        table.add_column(column, justify="right")
    forgetting = has_forgetting(results)
    if forgetting:
        table.add_column("forgetting", justify="right")
    finished = {n: r for n, r in results["strategies"].items() if r["status"] == "ok"}
    ranked = sorted(finished.items(), key=lambda kv: -kv[1]["metrics"][primary]["mean"])
    for name, r in ranked:
        table.add_row(name, *row_cells(name, r, metrics, comparison, forgetting))
    notes = []
    for name, r in results["strategies"].items():
        if r["status"] != "ok":
            table.add_row(name, r["status"], *[""] * (len(metrics) + len(CALIBRATION_COLUMNS) + 4 + forgetting))
            notes.append(f"{name} {r['status']}: {r.get('reason', '')}")
    if notes:
        table.caption = "\n".join([caption, *notes])
    return table


def has_forgetting(results: dict[str, Any]) -> bool:
    """Whether the table needs the forgetting column (a run that read the forgetting meter)."""
    return any(r.get("forgetting") for r in results["strategies"].values())


def row_cells(name: str, r: dict[str, Any], metrics: list[str], comparison: dict[str, Any], forgetting: bool = False) -> list[str]:
    """A finished row's cells after its name: metrics, 'vs best', calibration, trainable parameters, %, train s, peak
    MB (and the forgetting meter's reading when the table has that column)."""
    return [
        *(format_metric(r["metrics"][m]) if m in r["metrics"] else "n/a" for m in metrics),
        versus_best(name, comparison),
        *(_before_after(r, score) for score in ("ece", "brier")),
        f"{r['trainable_params']:,}",
        f"{r['trainable_percent']:.2f}",
        f"{r['train_seconds']:.1f}",
        f"{r['peak_memory_mb']:.0f}",
        *([format_forgetting(r.get("forgetting"))] if forgetting else []),
    ]


def _before_after(r: dict[str, Any], score: str) -> str:
    """'0.081→0.032': the score of the raw softmax, then of the calibrated one (n/a for runs recorded without it)."""
    if score not in r["metrics"] or "calibration" not in r:
        return "n/a"
    return f"{r['calibration'][f'{score}_uncalibrated']['mean']:.3f}→{r['metrics'][score]['mean']:.3f}"


def versus_best(name: str, comparison: dict[str, Any]) -> str:
    if comparison.get("best") == name:
        return "best"
    verdict = comparison.get("others", {}).get(name)
    if not verdict or verdict["p_value"] is None:
        return f"-{verdict['gap']:.4f}" if verdict else ""
    mark = "within noise" if verdict["within_noise"] else "worse"
    return f"{mark} (p={verdict['p_value']:.3f})"  # three decimals: p = 0.046 is not 'worse (p=0.05)'


def print_results(results: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(results_table(results))
