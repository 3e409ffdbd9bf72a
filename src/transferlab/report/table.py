"""The comparison table printed at the end of `compare`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

SHOWN_METRICS = ("accuracy", "macro_f1", "auroc", "mcc")


def format_metric(entry: dict[str, float]) -> str:
    mean, std = entry["mean"], entry["std"]
    if mean != mean:  # NaN: undefined on this test set
        return "n/a"
    return f"{mean:.4f}" if std == 0 else f"{mean:.4f} ± {std:.4f}"


def results_table(results: dict[str, Any]) -> Table:
    primary = results.get("primary_metric", "accuracy")
    metrics = [primary] + [m for m in SHOWN_METRICS if m != primary]
    table = Table(title=f"{results['backbone']} on {results['dataset']}: {results['n_train']} train, {results['n_test']} test")
    table.add_column("strategy")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for column in ("trainable", "%", "train s", "peak MB"):
        table.add_column(column, justify="right")
    finished = {n: r for n, r in results["strategies"].items() if r["status"] == "ok"}
    ranked = sorted(finished.items(), key=lambda kv: -kv[1]["metrics"][primary]["mean"])
    for name, r in ranked:
        table.add_row(
            name,
            *(format_metric(r["metrics"][m]) for m in metrics),
            f"{r['trainable_params']:,}",
            f"{r['trainable_percent']:.2f}",
            f"{r['train_seconds']:.1f}",
            f"{r['peak_memory_mb']:.0f}",
        )
    for name, r in results["strategies"].items():
        if r["status"] != "ok":
            table.add_row(name, f"{r['status']}: {r.get('reason', '')}", *[""] * (len(metrics) + 3))
    return table


def print_results(results: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(results_table(results))
