"""The run engine every command builds on: the prepared experiment (data, splits, checks, one encoding) and
one run of a strategy on one split and seed, measured; the run record and the run folder around them.

`compare`, `train`, `study` and `forgetting` are recipes over these pieces.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import set_seed

from transferlab import faults
from transferlab.backbones import Preprocessor, build_classifier, load_preprocessor, resolve_backbone
from transferlab.backbones.base import MULTI_LABEL, base_model
from transferlab.backbones.cnn import MIXUP_ALPHA
from transferlab.catalog import ResolvedAsset
from transferlab.config import RunConfig
from transferlab.data.augment import augment_texts
from transferlab.data.sources import LabeledData, is_multi_label, label_counts
from transferlab.data.splits import Split, folds_for_classes
from transferlab.distributed import is_main_process
from transferlab.environment import describe_environment
from transferlab.errors import NotApplicable, TrainingDiverged, UserError
from transferlab.evaluation.calibration import (
    brier_score,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    probabilities,
    softmax,
    tune_threshold,
    tune_thresholds,
)
from transferlab.evaluation.forgetting_meter import forgetting_probe, summarize_forgetting
from transferlab.evaluation.metrics import classification_metrics, default_metric, per_class_report
from transferlab.evaluation.stats import REPORTED_CHOICES, aggregate_runs
from transferlab.recipes.dataset import Findings, check_data, load_run_data, make_splits
from transferlab.recipes.run_folder import RunFolder
from transferlab.runio import LABEL_ISSUES, atomic_write_text
from transferlab.settings import MIN_VALIDATION, TrainingConfig
from transferlab.strategies import STRATEGIES, Strategy, count_parameters
from transferlab.training.inference import (
    cpu_has_bf16,
    default_device,
    forgo_onednn_primitive_cache,
    precision_for,
    precision_in_use,
    predict_logits,
)
from transferlab.training.loop import FitData, validation_logits
from transferlab.training.memory import PeakMemory
from transferlab.training.sampling import loss_class_weights, oversample, resolved_class_weights

Log = Callable[[str], None]


@dataclass
class Experiment:
    """Everything shared by the strategies of one run: the data, its splits, and one tokenisation."""

    config: RunConfig
    backbone: ResolvedAsset
    data: LabeledData
    splits: list[Split]
    preprocessor: Preprocessor
    encoded: dict[int, dict[str, Any]]  # one encoding of every example a split uses, by index into `data`
    findings: Findings  # the data checks (recipes/dataset.py)
    files: dict[str, Any]  # each data file's origin and sha256
    groups: np.ndarray  # duplicate group of every example in `data` (data/checks.py)

    @property
    def split(self) -> Split:
        """The first (for a hold-out run, the only) split."""
        return self.splits[0]

    @property
    def label_names(self) -> list[str]:
        return self.data.label_names

    def features(self, indices: np.ndarray) -> list[dict[str, Any]]:
        return [self.encoded[int(i)] for i in indices]

    def seeds(self) -> list[int]:
        return [self.config.training.seed + k for k in range(self.config.seeds)]

    def assets(self) -> dict[str, Any]:
        return {"backbone": self.backbone.__dict__, **self.files}


def forgo_onednn_cache_unless_training(strategies: list[str]) -> None:
    """A process none of whose strategies trains the backbone only runs models forward: without oneDNN's primitive
    cache its peak memory stays flat in the number of examples (`forgo_onednn_primitive_cache` says at what cost).
    For processes of our own (the command line, the benches); a user's Python session keeps its settings."""
    if not any(STRATEGIES[name].trains_backbone for name in strategies):
        forgo_onednn_primitive_cache()


def prepare(config: RunConfig, log: Log = print) -> Experiment:
    """Everything that can fail on bad input fails here, before any output is written."""
    run_data = load_run_data(config)
    data = run_data.data
    backbone = resolve_backbone(config.backbone)
    train = run_data.parts["train"]
    folds = wanted = config.folds(len(train))
    if config.test_dataset is None and not data.multi_label:
        fewer = folds_for_classes(data.labels[train], run_data.groups[train], data.label_names, folds, config.n_train)
        folds = fewer if config.cv is None else folds
    splits = make_splits(config, run_data, folds)
    counts = label_counts(data.labels[train], len(data.label_names))
    config.training.metric = config.training.metric or default_metric(counts, data.multi_label)
    # resolved once, so that every fold and seed trains alike and the record says which
    config.class_weights = resolved_class_weights(config.class_weights, counts, data.multi_label)
    log(
        f"{config.dataset}: {len(run_data.parts['train'])} examples, classes {_counts(dict(zip(data.label_names, counts.tolist())))}; "
        f"headline metric {config.training.metric}; class weights {config.class_weights}"
    )
    _say_precision(config, log)
    config.training.precision = precision_for(config.training.precision, config.family)
    split_kind = (
        f"{folds} stratified folds{' (so that each fold tests every class)' if folds < wanted else ''}"
        if folds > 1
        else "your test file"
        if config.test_dataset
        else "hold-out split"
    )
    augment = [] if config.family.augments_copies else config.augmentations()  # else applied per batch
    preprocessor = load_preprocessor(backbone, config.max_length, config.image_size, config.normalization, augment)
    used = np.unique(np.concatenate([np.concatenate([s.train, s.val, s.test]) for s in splits]))
    started = time.perf_counter()
    features = preprocessor.encode([data.inputs[i] for i in used], data.labels[used])
    log(f"encoded {len(used)} examples in {time.perf_counter() - started:.1f}s")
    findings = check_data(config, run_data, splits, used, features, backbone, preprocessor, log)
    log(
        f"{split_kind} x {config.seeds} seed(s); "
        + ", ".join(
            f"{name} {len(getattr(splits[0], name))} {_counts(splits[0].part(name).class_counts())}" for name in ("train", "val", "test")
        )
        + (" (fold 1)" if folds > 1 else "")
    )
    faults.reached("encoded")
    encoded = dict(zip(used.tolist(), features, strict=True))
    return Experiment(config, backbone, data, splits, preprocessor, encoded, findings, run_data.assets, run_data.groups)


def _say_precision(config: RunConfig, log: Log) -> None:
    """On a CPU, say what precision training takes, or that the one asked for was not taken."""
    if default_device().type != "cpu":
        return
    precision, family = config.training.precision, config.family
    if precision == "auto" and cpu_has_bf16() and family.cpu_bf16_declined:
        log(f"this CPU computes bf16 natively, but auto trains {family.name} backbones in fp32: {family.cpu_bf16_declined}")
    elif precision == "auto" and cpu_has_bf16():
        log(
            "this CPU computes bf16 natively: training steps run under bf16 autocast (--precision fp32 for exact fp32); evaluation and export stay fp32"
        )
    elif precision == "fp16" or (precision == "bf16" and not cpu_has_bf16()):
        log(f"--precision {precision}: this CPU does not compute {precision} natively (emulated it is slower than fp32); training in fp32")


def _counts(counts: dict[str, int]) -> str:
    return "(" + " / ".join(f"{k}: {v}" for k, v in counts.items()) + ")"


@dataclass
class StrategyRun:
    strategy: Strategy
    model: nn.Module | None  # None when the strategy does not apply to the backbone
    test_probs: np.ndarray | None
    result: dict[str, Any]
    log_history: list[dict[str, Any]]


def _training_examples(experiment: Experiment, split: Split, seed: int) -> tuple[list[dict[str, Any]], np.ndarray | None, np.ndarray]:
    """The fold's training examples, oversampled and augmented as configured (never val or test); their indices
    into the data when every one of them is an original example; and the duplicate group each comes from."""
    config = experiment.config
    indices = oversample(split.train, experiment.data.labels, seed) if config.oversample else split.train
    examples, groups = experiment.features(indices), experiment.groups[indices]
    if config.family.augments_copies and config.augmentations():
        texts = [experiment.data.inputs[i] for i in indices]
        extra_texts, extra_labels = augment_texts(texts, experiment.data.labels[indices], config.augment, config.augment_copies, seed)
        copies = np.repeat(groups, config.augment_copies)  # augment_texts makes each text's copies in a row
        return examples + experiment.preprocessor.encode(extra_texts, extra_labels), None, np.concatenate([groups, copies])
    return examples, indices, groups


@dataclass
class FittedRun:
    """A strategy trained on one split and seed, not yet measured on the test set: a search reads validation only."""

    strategy: Strategy
    model: nn.Module | None  # None when the strategy does not apply to the backbone
    skipped: str | None  # why it does not apply
    data: FitData | None = None
    fold: int = 0
    seed: int = 0
    training: TrainingConfig | None = None
    train_seconds: float = 0.0
    peak_mb: float = 0.0
    probe: Any = None  # the forgetting meter, when the run measures or mitigates forgetting


def fit_strategy(
    experiment: Experiment,
    name: str,
    workdir: Path | None = None,
    fold: int = 0,
    seed: int | None = None,
    on_evaluate: Callable[[dict[str, float]], bool] | None = None,
) -> FittedRun:
    """Fresh pretrained classifier -> fit, with its time and peak memory. `on_evaluate` sees each validation pass's
    metrics and stops the training by returning True (a search's pruner)."""
    config = experiment.config
    split = experiment.splits[fold]
    seed = config.training.seed if seed is None else seed
    training = config.training_for_seed(seed)
    strategy = config.strategy(name)
    seed_deterministically(seed)
    model = build_classifier(experiment.backbone, experiment.label_names, config.pooling).to(default_device())
    if experiment.data.multi_label:
        model.config.problem_type = MULTI_LABEL  # the export says so: a plain pipeline then applies a sigmoid per label
    reason = strategy.unsupported_reason(model)
    if reason:
        return FittedRun(strategy, None, reason)
    train_examples, train_indices, train_groups = _training_examples(experiment, split, seed)
    findings = experiment.findings
    frozen = None
    if strategy.reads_frozen_features() and train_indices is not None and findings.layer_features is not None:
        frozen = findings.features_of(np.concatenate([train_indices, split.val]))
    train_labels = np.array([f["labels"] for f in train_examples])  # class weights: refused for multi-label data
    data = FitData(
        train=train_examples,
        val=experiment.features(split.val),
        collate=experiment.preprocessor.collate,
        label_names=experiment.label_names,
        length_of=experiment.preprocessor.length_of,
        workdir=workdir,
        class_weights=loss_class_weights(config.class_weights, train_labels, len(experiment.label_names)),
        train_transform=getattr(experiment.preprocessor, "train_transform", None),
        train_variants=getattr(experiment.preprocessor, "train_variants", None),
        frozen_features=frozen,
        groups=np.concatenate([train_groups, experiment.groups[split.val]]),
        mixup_alpha=MIXUP_ALPHA if "mixup" in config.augmentations() else None,
        max_tokens=getattr(experiment.preprocessor, "max_length", None),
        on_evaluate=on_evaluate,
    )
    probe = forgetting_probe(experiment, model, data, seed, split.test)  # None unless the run measures or mitigates forgetting
    started = time.perf_counter()
    with PeakMemory() as memory:
        model = strategy.fit(model, data, training)
    train_seconds = time.perf_counter() - started
    peak_mb = memory.peak_mb
    if frozen is not None:  # the features the checks computed count as this strategy's work
        train_seconds += findings.feature_seconds * len(frozen["last"]) / len(findings.used)
        peak_mb = max(peak_mb, findings.feature_peak_mb)
    return FittedRun(strategy, model, None, data, fold, seed, training, train_seconds, peak_mb, probe)


def run_strategy(experiment: Experiment, name: str, workdir: Path | None = None, fold: int = 0, seed: int | None = None) -> StrategyRun:
    """Fresh pretrained classifier -> fit -> test metrics, with time, memory and parameter counts."""
    return measure(experiment, fit_strategy(experiment, name, workdir, fold, seed))


def measure(experiment: Experiment, fitted: FittedRun) -> StrategyRun:
    """The fitted model on its split's test examples: metrics, calibration and parameter counts."""
    if fitted.model is None:
        return StrategyRun(fitted.strategy, None, None, {"status": "skipped", "reason": fitted.skipped}, [])
    config, model, data, strategy, training = experiment.config, fitted.model, fitted.data, fitted.strategy, fitted.training
    split = experiment.splits[fitted.fold]
    trainable, total = count_parameters(model)
    trainable_head = sum(p.numel() for p in base_model(model).head_parameters() if p.requires_grad)
    labels = experiment.data.labels[split.test]
    multi = experiment.data.multi_label
    logits = predict_logits(
        model, experiment.features(split.test), data.collate, data.length_of, training.eval_batch_size
    )  # fp32, as exported
    temperature, threshold = _decision_rule(fitted, experiment.data.labels[split.val], config)
    probs = probabilities(logits, temperature, multi)
    result = {
        "status": "ok",
        "fold": fitted.fold,
        "seed": fitted.seed,
        "metrics": classification_metrics(labels, probs, len(experiment.label_names), threshold)
        | {"ece": expected_calibration_error(labels, probs), "brier": brier_score(labels, probs)},
        "calibration": calibration_report(labels, logits, temperature),
        "trainable_params": trainable,
        "trainable_params_without_head": trainable - trainable_head,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "train_seconds": fitted.train_seconds,
        "peak_memory_mb": fitted.peak_mb,
        "settings": strategy.config.__dict__,
        **per_class_report(labels, probs, experiment.label_names, threshold),
    }
    if fitted.probe is not None:
        result["forgetting"] = fitted.probe.after(strategy, model)
    result.update({key: entry[key] for entry in data.log_history for key in REPORTED_CHOICES if key in entry})
    if threshold is not None:
        result["decision_thresholds" if multi else "decision_threshold"] = threshold
    if multi:
        result["metrics"]["prior_baseline_micro_f1"] = prior_baseline(experiment, fitted, threshold is not None)["micro_f1"]
    base_model(model).config.calibration_temperature = temperature  # set last: the forgetting probe may train the model further
    return StrategyRun(strategy, model, probs, result, data.log_history)


def _decision_rule(fitted: FittedRun, val_labels: np.ndarray, config: RunConfig) -> tuple[float, float | None]:
    """The temperature and the binary decision threshold, both chosen on the validation split only: T = 1 and no
    threshold (argmax) when they are switched off or the split is too small to choose by."""
    if len(fitted.data.val) < MIN_VALIDATION or (config.calibration == "none" and config.threshold == "none"):
        return 1.0, None
    logits = validation_logits(fitted.model, fitted.data, fitted.training.eval_batch_size)
    temperature = 1.0 if config.calibration == "none" else fit_temperature(logits, val_labels)
    if config.threshold == "none":
        return temperature, None
    metric = fitted.training.headline_metric
    if is_multi_label(val_labels):
        return temperature, tune_thresholds(probabilities(logits, temperature, multi_label=True), val_labels, metric)
    return temperature, tune_threshold(softmax(logits, temperature), val_labels, metric)


def prior_baseline(experiment: Experiment, fitted: FittedRun, tuned: bool) -> dict[str, float]:
    """Multi-label: the test metrics of predicting every example's labels from their training frequencies alone (what
    scikit-learn's `DummyClassifier(strategy="prior")` predicts), with thresholds tuned on validation as the model's
    are: the score a model must beat to have learnt anything from the inputs."""
    split, labels = experiment.splits[fitted.fold], experiment.data.labels
    frequencies = labels[split.train].mean(0)

    def prior(n: int) -> np.ndarray:
        return np.tile(frequencies, (n, 1))

    threshold = tune_thresholds(prior(len(split.val)), labels[split.val], fitted.training.headline_metric) if tuned else None
    return classification_metrics(labels[split.test], prior(len(split.test)), len(experiment.label_names), threshold)


@dataclass(frozen=True)
class Job:
    strategy: str
    fold: int
    seed: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.strategy, self.fold, self.seed)


@dataclass
class Outcome:
    result: dict[str, Any]
    log_history: list[dict[str, Any]]


Runner = Callable[[Experiment, Job, Path | None], Outcome]


def strategy_outcome(experiment: Experiment, job: Job, workdir: Path | None) -> Outcome:
    """The job's strategy trained and measured, reduced to what the record needs (the model stays where it was trained)."""
    run = run_strategy(experiment, job.strategy, workdir=workdir, fold=job.fold, seed=job.seed)
    return Outcome(run.result, run.log_history)


def run_job(experiment: Experiment, job: Job, workdir: Path | None, runner: Runner = strategy_outcome) -> Outcome:
    """Every run of every command goes through here: `runner` (a strategy trained and measured, unless the
    command runs something else per job, as forgetting's sequential and LM runs do) with its failures captured.

    A run that fails is recorded as failed or diverged, with the reason, and the comparison goes on:
    one strategy must not sink the others; one that cannot run as asked (NotApplicable) is recorded as skipped. An
    interruption (Ctrl-C, a signal) still stops everything, and so does any other UserError: a setting the run cannot
    take (`--freeze-below` past the backbone's blocks, a meter the backbone lacks) is the user's to mend, in one line,
    not a failed run to record.
    """
    where = {"fold": job.fold, "seed": job.seed}
    try:
        return runner(experiment, job, workdir)
    except TrainingDiverged as err:
        return Outcome({"status": "diverged", "reason": str(err), **where}, [])
    except NotApplicable as err:
        return Outcome({"status": "skipped", "reason": str(err), **where}, [])
    except UserError:
        raise
    except (torch.OutOfMemoryError, MemoryError):
        return Outcome({"status": "failed", "reason": "out of memory: try a smaller --batch-size or --max-length", **where}, [])
    except Exception as err:
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'no message'}"
        return Outcome({"status": "failed", "reason": reason, "traceback": traceback.format_exc(), **where}, [])


def seed_deterministically(seed: int) -> None:
    """The same seed on the same machine gives the same numbers: seeded RNGs and deterministic kernels
    (an operation without one warns rather than stops the run)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # cuBLAS needs it for deterministic matmuls
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    set_seed(seed)


def run_record(experiment: Experiment, command: str) -> dict[str, Any]:
    split = experiment.split
    return {
        "command": command,
        "status": "running",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": experiment.config.backbone,
        "dataset": experiment.config.dataset,
        "label_names": experiment.label_names,
        "evaluation": {
            "folds": len(experiment.splits),
            "seeds": experiment.seeds(),
            "test_examples": "each fold's held-out part"
            if len(experiment.splits) > 1
            else f"your test file {experiment.config.test_dataset}"
            if experiment.config.test_dataset
            else "a stratified hold-out set",
        },
        "n_train": len(split.train) + len(split.val),
        "n_fit": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "class_counts": [s.summary() for s in experiment.splits],
        "data_checks": experiment.findings.summary,
        "seed": experiment.config.training.seed,
        "primary_metric": experiment.config.training.metric,
        "config": experiment.config.resolved(),
        "assets": experiment.assets(),
        "environment": describe_environment(),
        "training_precision": precision_in_use(experiment.config.training.precision),
        "strategies": {},
    }


def write_label_issues(out_dir: Path, experiment: Experiment) -> None:
    """label_issues.csv in the run folder: every example cleanlab flags, most likely mislabelled first."""
    issues = experiment.findings.label_issues
    if issues is not None:
        atomic_write_text(out_dir / LABEL_ISSUES, issues.to_csv(index=False))


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A strategy's row of results.json: metrics over its runs, and the forgetting meter's when it was read."""
    summary = aggregate_runs(runs)
    if summary["status"] == "ok" and runs[0].get("forgetting"):
        summary["forgetting"] = summarize_forgetting(runs)
    return summary


def open_run_folder(
    out_dir: Path,
    config: RunConfig,
    resume: bool | None,
    log: Log,
    experiment: Experiment,
    command: str,
    second_task: Experiment | None = None,
) -> RunFolder:
    """The resolved config first; an unfinished run of the same config by the same `command` is carried on (rank 0
    decides), only over the same files as the prepared experiment's (and the `second_task`'s, that the run trains on
    next)."""
    folder = RunFolder(out_dir)
    if is_main_process():
        hashes = {name: asset["hashes"] for name, asset in experiment.assets().items() if asset}
        if second_task is not None:
            hashes |= {f"task B {name}": asset["hashes"] for name, asset in second_task.assets().items() if asset}
        folder.open(config.resolved(), resume, log, hashes, command)
    return folder
