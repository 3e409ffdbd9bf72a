"""results.json records built from made-up runs, the way compare and study build theirs (through summarize_runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transferlab.evaluation.stats import compare_to_best
from transferlab.recipes.experiment import summarize_runs
from transferlab.runio import atomic_write_json

LABELS = ["negative", "positive"]


def run(accuracy: float, seed: int = 0, seconds: float = 10.0, total: int = 1000, trainable: int = 100) -> dict[str, Any]:
    right = round(accuracy * 50)
    return {
        "status": "ok",
        "fold": 0,
        "seed": seed,
        "metrics": {"accuracy": accuracy, "macro_f1": accuracy, "auroc": min(1.0, accuracy + 0.05), "mcc": 2 * accuracy - 1},
        "trainable_params": trainable,
        "trainable_params_without_head": trainable - 10,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "train_seconds": seconds,
        "peak_memory_mb": 123.0,
        "settings": {},
        "per_class": {name: {"precision": accuracy, "recall": accuracy, "f1": accuracy, "support": 25} for name in LABELS},
        "confusion_matrix": [[right // 2, 25 - right // 2], [25 - (right - right // 2), right - right // 2]],
    }


def record(rows: dict[str, list[float]], command: str = "compare", **per_row: dict[str, Any]) -> dict[str, Any]:
    """A finished run: one row per name with these accuracies (one per seed); `per_row[name]` overrides run fields."""
    strategies = {
        name: summarize_runs([{**run(a, seed=i), **per_row.get(name, {})} for i, a in enumerate(accuracies)])
        for name, accuracies in rows.items()
    }
    seeds = max(len(a) for a in rows.values())
    return {
        "command": command,
        "status": "complete",
        "created": "2026-11-27T00:00:00+00:00",
        "backbone": "minilm-l6",
        "dataset": "rt-polarity",
        "label_names": LABELS,
        "evaluation": {"folds": 1, "seeds": list(range(seeds)), "test_examples": "a stratified hold-out set"},
        "n_train": 400,
        "n_fit": 360,
        "n_val": 40,
        "n_test": 50,
        "seed": 0,
        "primary_metric": "accuracy",
        "strategies": strategies,
        "comparison": compare_to_best(strategies, "accuracy"),
    }


def curve(losses: list[float], steps_per_epoch: int = 10) -> dict[str, list[list[float]]]:
    """A validation-loss curve evaluated every 5 steps."""
    return {
        "loss": [[5.0 * (i + 1), 5.0 * (i + 1) / steps_per_epoch, v + 0.05] for i, v in enumerate(losses)],
        "eval_loss": [[5.0 * (i + 1), 5.0 * (i + 1) / steps_per_epoch, v] for i, v in enumerate(losses)],
    }


def study_record(name: str, points: list[dict[str, Any]], rows: dict[str, list[float]], quick: bool = True, **per_row) -> dict[str, Any]:
    """A finished study: `points` are the study entries (label, x, series, strategy, curves)."""
    from transferlab.studies import get_study
    from transferlab.studies.base import judge

    study = get_study(name)
    out = record(rows, command=f"study {name}", **per_row)
    out["study"] = {
        "name": name,
        "summary": study.summary,
        "quick": quick,
        "x_label": study.x_label,
        "log_x": study.log_x,
        "panel": study.panel,
        "expected_result": study.expected_result,
        "points": [{"series": "", "strategy": "full", "curves": [], **p} for p in points],
    }
    out["study"]["expectation"] = judge(study, out)
    return out


def write_run_folder(directory: Path, results: dict[str, Any], with_logs: bool = True) -> Path:
    """results.json, and a Trainer-like log history for every row (training loss, evaluations)."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / "results.json", results)
    if with_logs:
        for i, name in enumerate(results["strategies"]):
            history = []
            for step in range(1, 21):
                history.append({"loss": 0.7 / (1 + 0.1 * step * (i + 1)), "learning_rate": 1e-4, "epoch": step / 10, "step": step})
                if step % 5 == 0:
                    history.append(
                        {"eval_loss": 0.6 / (1 + 0.05 * step), "eval_accuracy": 0.6 + 0.01 * step, "epoch": step / 10, "step": step}
                    )
            path = directory / "strategies" / name / "log-fold1-seed0.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(e) + "\n" for e in history))
    return directory
