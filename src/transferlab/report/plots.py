"""The report's figures, drawn with matplotlib's Agg backend into PNG bytes (no display, no network)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from transferlab.evaluation.stats import mean_curve
from transferlab.results import DRIFT_LABEL

MAX_CONFUSION = 6  # confusion matrices shown: the best rows first


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png(figure: Any) -> bytes:
    """The figure as PNG, without the metadata matplotlib adds (its version and web address)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(figure)
    return buffer.getvalue()


def training_curves(histories: dict[str, list[list[dict[str, Any]]]], metric: str) -> bytes | None:
    """Training and validation loss, and the validation headline metric, against the step; one colour per row."""
    plotted = {name: runs for name, runs in histories.items() if any("loss" in e or "eval_loss" in e for run in runs for e in run)}
    if not plotted:
        return None
    plt = _pyplot()
    figure, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    colours = plt.get_cmap("tab10" if len(plotted) <= 10 else "tab20")
    for i, (name, runs) in enumerate(plotted.items()):
        colour = colours(i % colours.N)
        for j, run in enumerate(runs):
            label = name if j == 0 else None
            for key, style in (("loss", "-"), ("eval_loss", "--")):
                points = [(e["step"], e[key]) for e in run if key in e and "step" in e]
                if points:
                    loss_ax.plot(*zip(*points), style, color=colour, alpha=0.85, lw=1.3, label=label if key == "loss" else None)
            points = [(e["step"], e[f"eval_{metric}"]) for e in run if f"eval_{metric}" in e]
            if points:
                metric_ax.plot(*zip(*points), "o-", color=colour, ms=3, lw=1.3, label=label)
    loss_ax.set(xlabel="step", ylabel="loss", title="training loss (solid), validation loss (dashed)")
    metric_ax.set(xlabel="step", ylabel=f"validation {metric}", title=f"validation {metric}")
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return png(figure)


def _panels(count: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """A figure of `count` panels, three to a row, each width x height inches; the grid's spare cells are blank."""
    columns = min(3, count)
    rows = math.ceil(count / columns)
    figure, axes = _pyplot().subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return figure, list(axes.flat[:count])


def confusion_matrices(results: dict[str, Any], order: list[str]) -> bytes | None:
    """Summed over each row's runs (rows: true class, columns: predicted)."""
    shown = [n for n in order if results["strategies"][n].get("confusion_matrix")][:MAX_CONFUSION]
    if not shown:
        return None
    names = results.get("label_names") or [str(i) for i in range(len(results["strategies"][shown[0]]["confusion_matrix"]))]
    size = max(3.2, 0.5 * len(names) + 2)
    figure, axes = _panels(len(shown), size, size)
    for ax, name in zip(axes, shown):
        matrix = np.asarray(results["strategies"][name]["confusion_matrix"])
        ax.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                color="white" if value > (matrix.min() + matrix.max()) / 2 else "black",
                fontsize=8,
            )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title=name)
    figure.tight_layout()
    return png(figure)


def reliability_diagrams(results: dict[str, Any], order: list[str]) -> bytes | None:
    """Accuracy against confidence per bin, raw softmax and after temperature scaling: on the diagonal is calibrated."""
    shown = [n for n in order if results["strategies"][n].get("runs") and "calibration" in results["strategies"][n]["runs"][0]][
        :MAX_CONFUSION
    ]
    if not shown:
        return None
    figure, axes = _panels(len(shown), 3.6, 3.4)
    for ax, name in zip(axes, shown):
        calibration = results["strategies"][name]["runs"][0]["calibration"]
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
        for key, label, marker in (("reliability_uncalibrated", "raw", "o"), ("reliability", f"T = {calibration['temperature']:.2f}", "s")):
            bins = calibration[key]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker=marker, markersize=4, label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence", ylabel="accuracy", title=name)
        ax.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    return png(figure)


def study_plot(results: dict[str, Any]) -> bytes:
    """The study's own figure: the test metric against its x (one line per series, ± std over seeds),
    and beside it the study's second panel: validation-loss curves per point (lr-sweep, epochs) or the
    forgetting meter against x (forgetting)."""
    plt = _pyplot()
    study = results["study"]
    metric = results["primary_metric"]
    panel = study.get("panel")
    figure, axes = plt.subplots(1, 2 if panel else 1, figsize=(12 if panel else 7, 4.4), squeeze=False)
    ax = axes[0][0]
    entries = study["points"]
    categorical = any(isinstance(e["x"], str) for e in entries)
    series = _series(results, lambda summary: summary["metrics"][metric])
    for name, rows in series.items():
        xs = list(range(len(rows))) if categorical else [float(x) for x, _, _ in rows]
        if categorical:
            ax.bar(xs, [m for _, m, _ in rows], yerr=[s for _, _, s in rows], capsize=4, color="tab:blue", alpha=0.8)
            ax.set_xticks(xs, [str(x) for x, _, _ in rows])
            low = min(m - s for _, m, s in rows)
            ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(m + s for _, m, s in rows) + 0.03))
        else:
            ax.errorbar(xs, [m for _, m, _ in rows], yerr=[s for _, _, s in rows], marker="o", capsize=4, label=name or metric)
    if study.get("log_x") and not categorical:
        ax.set_xscale("log")
    ax.set(xlabel=study["x_label"], ylabel=f"test {metric}", title=f"{study['name']}: test {metric} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    if panel == "validation-loss":
        _validation_loss_panel(axes[0][1], study)
    elif panel == "forgetting":
        _forgetting_panel(axes[0][1], results)
    figure.tight_layout()
    return png(figure)


def _series(
    results: dict[str, Any], value_of: Callable[[dict[str, Any]], dict[str, float] | None]
) -> dict[str, list[tuple[Any, float, float]]]:
    """(x, mean, std) per series, in point order, of the finished points whose summary has the value."""
    series: dict[str, list[tuple[Any, float, float]]] = {}
    for e in results["study"]["points"]:
        summary = results["strategies"].get(e["label"], {})
        value = value_of(summary) if summary.get("status") == "ok" else None
        if value is not None:
            series.setdefault(e["series"], []).append((e["x"], value["mean"], value["std"]))
    return series


def _validation_loss_panel(ax: Any, study: dict[str, Any]) -> None:
    by_epoch = study["name"] == "epochs"
    for e in study["points"]:
        curve = mean_curve(e.get("curves", []))
        if curve:
            ax.plot([epoch if by_epoch else step for step, epoch, _ in curve], [v for _, _, v in curve], marker=".", label=e["label"])
    ax.set(xlabel="epoch" if by_epoch else "step", ylabel="validation loss", title="validation loss (mean over seeds)")
    if study.get("log_x"):  # a sweep over orders of magnitude: the highest rate's loss dwarfs the others
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _forgetting_panel(ax: Any, results: dict[str, Any]) -> None:
    study = results["study"]
    meters = {s["forgetting"]["meter"] for s in results["strategies"].values() if s.get("forgetting")}
    for name, rows in _series(results, lambda summary: (summary.get("forgetting") or {}).get("drift")).items():
        ax.errorbar(
            [float(x) for x, _, _ in rows], [m for _, m, _ in rows], yerr=[s for _, _, s in rows], marker="o", capsize=4, label=name
        )
    if study.get("log_x"):
        ax.set_xscale("log")
    ax.set(xlabel=study["x_label"], ylabel=" / ".join(DRIFT_LABEL[m] for m in sorted(meters)), title="forgetting (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()


def search_plot(search: dict[str, Any]) -> bytes:
    """`auto`'s search: each trial's validation score against the time it ended, one colour per strategy, a marker
    per ending (complete, pruned, stopped by the budget or by another trial's perfect score), and the best complete
    score so far as a step line."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(9, 4.5))
    rows = sorted(search["trials"], key=lambda r: r["trial"])
    ended = np.cumsum([r["seconds"] or 0.0 for r in rows]) / 60
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    colours = plt.get_cmap("tab10" if len(strategies) <= 10 else "tab20")
    markers = {"complete": "o", "pruned": "x", "budget": "v", "decided": "v"}
    labelled: set[str] = set()
    for row, minute in zip(rows, ended):
        if row["validation"] is None:
            continue
        name = row["strategy"]
        ax.plot(minute, row["validation"], markers.get(row["state"], "s"), color=colours(strategies.index(name) % colours.N),
                label=None if name in labelled else name, ms=7)  # fmt: skip
        labelled.add(name)
    candidates = [(m, r["validation"]) for r, m in zip(rows, ended) if r["state"] in ("complete", "budget")]
    if candidates:
        best = np.maximum.accumulate([v for _, v in candidates])
        ax.step([m for m, _ in candidates], best, where="post", color="black", lw=1, alpha=0.6, label="best candidate")
    ax.set(
        xlabel="minutes of search",
        ylabel=f"validation {search['metric']}",
        title="search: o complete, x pruned, v stopped (budget, or a perfect score)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return png(figure)
