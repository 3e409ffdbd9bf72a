"""`transferlab forgetting`: a forgetting meter before and after each strategy (the meters themselves are the
run engine's hook, evaluation/forgetting_meter.py). The sequential meter (task A, then task B on the same body)
runs here only: it trains twice.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import set_seed

from transferlab.backbones import TransferModel, build_classifier
from transferlab.backbones.base import base_model
from transferlab.errors import NotApplicable, UserError
from transferlab.evaluation import forgetting as fg
from transferlab.evaluation.forgetting_meter import meter_for, summarize_forgetting
from transferlab.evaluation.metrics import classification_metrics
from transferlab.evaluation.stats import mean_std
from transferlab.settings import ForgettingConfig, TrainingConfig
from transferlab.strategies.base import Strategy
from transferlab.training.inference import default_device, map_batches
from transferlab.training.loop import FitData, train_with_trainer

if TYPE_CHECKING:
    from transferlab.config import RunConfig
    from transferlab.recipes.experiment import Experiment, Log

# Task A trained once per strategy, seed and settings in a process: mitigation arms compared in one process
# (the slow test, docs/findings.md) start task B from the same model, and pay for task A once.
_TASK_A: dict[str, tuple[nn.Module, float]] = {}


# ----------------------------------------------------------------------------------------------- the command


def run_forgetting(config: RunConfig, out_dir: Path, log: Log = print, resume: bool | None = None) -> dict[str, Any]:
    """Each strategy x seed: the meter before and after, each reading recorded as it finishes (an
    interrupted run resumes like compare's); results.json written atomically at the end."""
    from transferlab.recipes.experiment import Job, open_run_folder, prepare, run_job, run_record, write_label_issues

    if config.cv not in (None, 1):
        raise UserError(f"forgetting measures on one hold-out split, not {config.cv} folds: leave out cv (repeat with --seeds)")
    config.cv = 1  # the meter, not cross-validation, is what this command reports
    experiment = prepare(config, log)
    sequential_b = None
    if config.forgetting.meter == "sequential":  # prepared first: a resumed run must find task B's files unchanged too
        b_training = dataclasses.replace(config.training, metric=None, lr=config.forgetting.task_b_lr or config.training.lr)
        task_b = dataclasses.replace(config, dataset=config.forgetting.task_b, training=b_training)
        sequential_b = prepare(task_b, log)
    folder = open_run_folder(out_dir, config, resume, log, experiment, "forgetting", sequential_b)
    record = run_record(experiment, "forgetting")
    record["forgetting"] = dataclasses.asdict(config.forgetting)
    for name in config.strategies:
        runs = []
        for seed in experiment.seeds():
            result = folder.finished_result(name, 0, seed)
            if result is None:
                started = time.perf_counter()
                result = run_job(experiment, Job(name, 0, seed), None, functools.partial(_forgetting_run, sequential_b)).result
                result["seconds"] = time.perf_counter() - started
                folder.save_run(name, 0, seed, result, [])
            runs.append(result)
            log(f"{name} seed {seed}: {describe_reading(result)}")
        record["strategies"][name] = {"runs": runs, **summarize_strategy(runs)}
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_label_issues(out_dir, experiment)
    folder.complete(record)
    return record


def _forgetting_run(sequential_b: Experiment | None, experiment: Experiment, job: Any, workdir: Path | None) -> Any:
    """One job of the command: task A then task B (the sequential meter), the LM objective, or the strategy's
    own run (the meters then read before and after it through the run engine's hook)."""
    from transferlab.recipes.experiment import Outcome, strategy_outcome

    if sequential_b is not None:
        return Outcome(run_sequential(experiment, sequential_b, job.strategy, job.seed), [])
    if experiment.config.forgetting.objective == "lm":
        return Outcome(run_causal_lm(experiment, job.strategy, job.seed), [])
    return strategy_outcome(experiment, job, workdir)


def describe_reading(result: dict[str, Any]) -> str:
    if result.get("status") != "ok":
        return f"{result.get('status')}: {result.get('reason', '')}"
    f = result["forgetting"]
    if f["meter"] == "sequential":
        return f"task A {f['a_metric']} {f['before']:.4f} -> {f['after']:.4f} after task B ({f['b_metric']} {f['b_score']:.4f})"
    if "task_perplexity" in result:
        t = result["task_perplexity"]
        return f"general-text perplexity {f['before']:.2f} -> {f['after']:.2f}; task-text perplexity {t['before']:.2f} -> {t['after']:.2f}"
    if f["meter"] == "perplexity":
        return f"perplexity {f['before']:.2f} -> {f['after']:.2f}; task {result['metrics']['accuracy']:.4f}"
    return (
        f"mean CKA {f['after']:.4f} (per layer {', '.join(f'{v:.3f}' for v in f['per_layer'])}); task {result['metrics']['accuracy']:.4f}"
    )


def summarize_strategy(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return {"status": runs[0].get("status"), "reason": runs[0].get("reason")}
    summary = {"status": "ok", "forgetting": summarize_forgetting(ok)}
    if ok[0]["forgetting"]["meter"] == "sequential":
        summary["forgetting"]["b_score"] = mean_std([r["forgetting"]["b_score"] for r in ok])
    elif "task_perplexity" in ok[0]:
        summary["task_perplexity"] = {k: mean_std([r["task_perplexity"][k] for r in ok]) for k in ("before", "after")}
    else:
        summary["accuracy"] = mean_std([r["metrics"]["accuracy"] for r in ok])
    return summary


def run_sequential(a: Experiment, b: Experiment, name: str, seed: int) -> dict[str, Any]:
    """Train task A, then task B on the same body (a new head for B, A's kept); A's test score before and after B.

    Mitigations protect A while B trains: EWC's Fisher and anchor come from the model trained on A, replay
    draws A's training examples through A's frozen head, L2-SP anchors at the weights B starts from.
    """
    from transferlab.recipes.experiment import run_strategy

    cfg = a.config.forgetting
    a_metric = a.config.training.headline_metric
    key = repr((a.config.backbone, a.config.dataset, a.config.n_train, a.config.n_test, a.config.max_length, name, seed, a.config.training))
    if key not in _TASK_A:
        # Task A trains as a plain run: the mitigations protect A while B trains, and the meter is this function
        plain_a = dataclasses.replace(a, config=dataclasses.replace(a.config, forgetting=ForgettingConfig()))
        first = run_strategy(plain_a, name, seed=seed)
        if first.model is None:
            return first.result
        _TASK_A[key] = (first.strategy.export(first.model), first.result["metrics"][a_metric])
        del first
    trained_a, before = _TASK_A[key]
    head_a = fg.frozen_head(trained_a)
    a_train = a.features(a.split.train)
    regularizers: list[Any] = []
    for mitigation in cfg.mitigations:
        if mitigation == "ewc":
            fisher = fg.classification_fisher(trained_a, a_train, a.preprocessor.collate, cfg.fisher_examples)
            regularizers.append(fg.AnchorPenalty(fg.backbone_state(trained_a), cfg.ewc_lambda, fisher))
        elif mitigation == "l2sp":
            regularizers.append(fg.AnchorPenalty(fg.backbone_state(trained_a), cfg.l2sp_alpha))
        elif mitigation == "replay":
            loss_of = fg.classification_replay_loss(head_a, a.preprocessor.collate)
            regularizers.append(fg.ReplayTerm(a_train, loss_of, cfg.replay_fraction, a.config.training.batch_size, seed))
    body = {k: v.clone() for k, v in trained_a.backbone.state_dict().items()}

    training = b.config.training_for_seed(seed)
    strategy = b.config.strategy(name)
    set_seed(seed)
    model_b = build_classifier(b.backbone, b.label_names, b.config.pooling).to(default_device())
    model_b.backbone.load_state_dict(body)
    data = FitData(
        train=b.features(b.split.train),
        val=b.features(b.split.val),
        collate=b.preprocessor.collate,
        label_names=b.label_names,
        length_of=b.preprocessor.length_of,
        regularizer=fg.Regularizers(regularizers) if regularizers else None,
    )
    started = time.perf_counter()
    fitted = strategy.export(strategy.fit(model_b, data, training))
    seconds = time.perf_counter() - started
    head_a = head_a.to(default_device())
    b_metric = b.config.training.headline_metric
    b_probs = map_batches(
        fitted,
        b.features(b.split.test),
        b.preprocessor.collate,
        lambda m, x: torch.softmax(m(**x).logits.float(), -1),
        b.preprocessor.length_of,
    )
    a_probs = map_batches(
        fitted,
        a.features(a.split.test),
        a.preprocessor.collate,
        lambda m, x: torch.softmax(head_a(m.forward_features(**x)).float(), -1),
        a.preprocessor.length_of,
    )
    after = classification_metrics(a.data.labels[a.split.test], a_probs, len(a.label_names))[a_metric]
    b_score = classification_metrics(b.data.labels[b.split.test], b_probs, len(b.label_names))[b_metric]
    return {
        "status": "ok",
        "seed": seed,
        "b_train_seconds": seconds,
        "forgetting": {
            "meter": "sequential",
            "task_a": a.config.dataset,
            "task_b": b.config.dataset,
            "a_metric": a_metric,
            "b_metric": b_metric,
            "before": before,
            "after": after,
            "b_score": b_score,
            "mitigations": list(cfg.mitigations),
        },
    }


# ----------------------------------------------------------------------------------------------- causal-LM fine-tuning


class _LanguageModelObjective(nn.Module):
    """A decoder classifier's body on its own next-token loss (the tied LM head), in the shape the Trainer calls."""

    MODEL_PREFIX = "model."  # how the classifier's parameter names read from here

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        return {"loss": fg.body_lm_nll(self.model, input_ids, attention_mask)}


def fine_tune_causal_lm(
    model: TransferModel, strategy: Strategy, examples: list[dict[str, Any]], collate: Any, training: TrainingConfig
) -> nn.Module:
    """Fine-tune a decoder body's own LM objective on encoded texts, as `strategy` prepares it (LoRA merged after).

    The strategy's `prepare` and `export` with our Trainer (its schedule, precision and divergence guard); no
    validation and no step floor: there is no label to stop on and no new head to train.
    """
    if type(strategy).fit is not Strategy.fit or not strategy.starts_at_pretrained:
        raise NotApplicable(f"the LM objective trains a strategy's prepared body on the Trainer; {strategy.name} trains otherwise")
    prepared = strategy.prepare(model)
    if not any(p.requires_grad for p in base_model(prepared).backbone.parameters()):
        raise NotApplicable(f"{strategy.name} trains no parameter of this body, so the LM objective has nothing to train")
    data = FitData(train=[{k: v for k, v in f.items() if k != "labels"} for f in examples], val=[], collate=collate, label_names=[])
    scale = strategy.lr_scale(model, data, training)  # discriminative rates, by the classifier's parameter names
    by_name = None if scale is None else lambda name: scale(name.removeprefix(_LanguageModelObjective.MODEL_PREFIX))
    lm_training = dataclasses.replace(training, min_steps=0)
    train_with_trainer(_LanguageModelObjective(prepared), data, lm_training, lr=strategy.learning_rate(training), lr_scale=by_name)
    return strategy.export(prepared)


def run_causal_lm(experiment: Experiment, name: str, seed: int) -> dict[str, Any]:
    """`objective: lm`: fine-tune the decoder's own LM on the task's training texts; perplexity on general
    text and on the task's test texts, before and after."""
    cfg, config = experiment.config.forgetting, experiment.config
    path, tokenizer = experiment.backbone.path, experiment.preprocessor.tokenizer
    set_seed(seed)
    model = build_classifier(experiment.backbone, experiment.label_names, config.pooling).to(default_device())
    meter_for(model, "perplexity")  # a decoder, or a clear error
    choice, general = fg.general_texts(cfg.general_text, config.dataset, cfg.general_examples)
    task_test = [experiment.data.inputs[i] for i in experiment.split.test[: cfg.general_examples]]

    def readings(lm: nn.Module) -> tuple[float, float]:
        return tuple(fg.perplexity(lm, tokenizer, texts, cfg.general_max_length) for texts in (general, task_test))

    before = readings(fg.lm_after(model, path))
    examples = experiment.features(experiment.split.train)
    fitted = fine_tune_causal_lm(model, config.strategy(name), examples, experiment.preprocessor.collate, config.training_for_seed(seed))
    after = readings(fg.lm_after(fitted, path))
    return {
        "status": "ok",
        "seed": seed,
        "objective": "lm",
        "task_perplexity": {"before": before[1], "after": after[1]},
        "forgetting": {
            "meter": "perplexity",
            "general_text": choice,
            "texts": len(general),
            "before": before[0],
            "after": after[0],
            "mitigations": [],
        },
    }
