"""`transferlab compare`: every chosen strategy on the same split, one table.

Read top to bottom: load and split the data, tokenise once, then for each strategy build a fresh
classifier from the pretrained backbone, fit it, evaluate it on the held-out test set, and record
metrics, trainable parameters, time and peak memory. Results are written atomically at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from transformers import set_seed

from transferlab.backbones import Preprocessor, build_classifier, load_preprocessor
from transferlab.catalog import ResolvedAsset, resolve_backbone
from transferlab.config import RunConfig
from transferlab.data.sources import load_dataset
from transferlab.data.splits import Split, stratified_split
from transferlab.environment import describe_environment
from transferlab.evaluation.metrics import classification_metrics, per_class_report
from transferlab.runio import atomic_write_json, atomic_write_text, atomic_write_yaml
from transferlab.strategies import Strategy, count_parameters
from transferlab.training.loop import FitData, default_device, predict_proba
from transferlab.training.memory import PeakMemory

Log = Callable[[str], None]


@dataclass
class Experiment:
    """Everything shared by the strategies of one run: the split, encoded once."""

    config: RunConfig
    backbone: ResolvedAsset
    split: Split
    preprocessor: Preprocessor
    encoded: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def label_names(self) -> list[str]:
        return self.split.train.label_names

    def assets(self) -> dict[str, Any]:
        return {"backbone": self.backbone.__dict__, "dataset": self.split.train.asset.__dict__ if self.split.train.asset else None}


def prepare(config: RunConfig, log: Log = print) -> Experiment:
    """Everything that can fail on bad input fails here, before any output is written."""
    data = load_dataset(config.dataset, config.text_column, config.label_column)
    backbone = resolve_backbone(config.backbone)
    split = stratified_split(data, config.n_train, config.n_test, config.val_fraction, config.training.seed)
    log(
        f"{config.dataset}: {len(data)} examples, {len(data.label_names)} classes -> "
        + ", ".join(
            f"{name} {len(getattr(split, name))} {_counts(getattr(split, name).class_counts())}" for name in ("train", "val", "test")
        )
    )
    preprocessor = load_preprocessor(backbone, config.max_length)
    started = time.perf_counter()
    encoded = {
        name: preprocessor.encode(part.texts, part.labels)
        for name, part in (("train", split.train), ("val", split.val), ("test", split.test))
    }
    log(f"encoded {sum(map(len, encoded.values()))} examples in {time.perf_counter() - started:.1f}s")
    return Experiment(config, backbone, split, preprocessor, encoded)


def _counts(counts: dict[str, int]) -> str:
    return "(" + " / ".join(f"{k}: {v}" for k, v in counts.items()) + ")"


@dataclass
class StrategyRun:
    strategy: Strategy
    model: nn.Module | None  # None when the strategy does not apply to the backbone
    test_probs: np.ndarray | None
    result: dict[str, Any]
    log_history: list[dict[str, Any]]


def run_strategy(experiment: Experiment, name: str, workdir: Path | None = None) -> StrategyRun:
    """Fresh pretrained classifier -> fit -> test metrics, with time, memory and parameter counts."""
    config = experiment.config
    strategy = config.strategy(name)
    set_seed(config.training.seed)
    model = build_classifier(experiment.backbone, experiment.label_names, config.pooling).to(default_device())
    reason = strategy.unsupported_reason(model)
    if reason:
        return StrategyRun(strategy, None, None, {"status": "skipped", "reason": reason}, [])
    data = FitData(
        train=experiment.encoded["train"],
        val=experiment.encoded["val"],
        collate=experiment.preprocessor.collate,
        label_names=experiment.label_names,
        length_of=experiment.preprocessor.length_of,
        workdir=workdir,
    )
    started = time.perf_counter()
    with PeakMemory() as memory:
        model = strategy.fit(model, data, config.training)
    train_seconds = time.perf_counter() - started
    trainable, total = count_parameters(model)
    trainable_head = sum(p.numel() for p in _base(model).head_parameters() if p.requires_grad)
    probs = predict_proba(model, experiment.encoded["test"], data.collate, data.length_of, config.training.eval_batch_size)
    labels = experiment.split.test.labels
    metrics = classification_metrics(labels, probs, len(experiment.label_names))
    result = {
        "status": "ok",
        "metrics": {k: {"mean": v, "std": 0.0} for k, v in metrics.items()},
        "trainable_params": trainable,
        "trainable_params_without_head": trainable - trainable_head,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "train_seconds": train_seconds,
        "peak_memory_mb": memory.peak_mb,
        "settings": strategy.config.__dict__,
        **per_class_report(labels, probs, experiment.label_names),
    }
    return StrategyRun(strategy, model, probs, result, data.log_history)


def _base(model: nn.Module) -> Any:
    """The TransferModel inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def run_record(experiment: Experiment, command: str) -> dict[str, Any]:
    split = experiment.split
    return {
        "command": command,
        "status": "running",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": experiment.config.backbone,
        "dataset": experiment.config.dataset,
        "label_names": experiment.label_names,
        "n_train": len(split.train) + len(split.val),
        "n_fit": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "class_counts": split.summary(),
        "seed": experiment.config.training.seed,
        "primary_metric": experiment.config.training.metric,
        "config": experiment.config.resolved(),
        "assets": experiment.assets(),
        "environment": describe_environment(),
        "strategies": {},
    }


def compare(config: RunConfig, out_dir: Path, log: Log = print, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    experiment = prepare(config, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(out_dir / "config.yaml", config.resolved())
    record = run_record(experiment, "compare")
    for name in config.strategies:
        if progress:
            progress(name)
        strategy_dir = out_dir / "strategies" / name
        run = run_strategy(experiment, name, workdir=strategy_dir)
        _write_log(strategy_dir / "log.jsonl", run.log_history)
        record["strategies"][name] = run.result
        if run.model is None:
            log(f"{name}: skipped: {run.result['reason']}")
            continue
        m = run.result["metrics"][config.training.metric]["mean"]
        log(f"{name}: test {config.training.metric} {m:.4f} in {run.result['train_seconds']:.1f}s")
    record["status"] = "complete"
    atomic_write_json(out_dir / "results.json", record)
    return record


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(entry, default=float) + "\n" for entry in history))
