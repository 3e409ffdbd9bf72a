"""`transferlab forgetting`: a forgetting meter before and after each strategy (the meters themselves are the
run engine's hook, evaluation/forgetting_meter.py). The sequential meter (task A, then task B on the same body)
runs here only: it trains twice.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers import set_seed

from transferlab.backbones import build_classifier
from transferlab.errors import UserError
from transferlab.evaluation import forgetting as fg
from transferlab.evaluation.forgetting_meter import meter_for, summarize_forgetting
from transferlab.evaluation.metrics import classification_metrics
from transferlab.evaluation.stats import mean_std
from transferlab.training.loop import FitData, default_device, map_batches

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
    from transferlab.recipes.experiment import open_run_folder, prepare, run_record, run_strategy, write_label_issues

    if config.cv is None:
        config.cv = 1  # one hold-out split: the meter, not cross-validation, is what this command reports
    experiment = prepare(config, log)
    folder = open_run_folder(out_dir, config, resume, log)
    record = run_record(experiment, "forgetting")
    record["forgetting"] = dataclasses.asdict(config.forgetting)
    sequential_b = None
    if config.forgetting.meter == "sequential":
        b_training = dataclasses.replace(config.training, metric=None, lr=config.forgetting.task_b_lr or config.training.lr)
        task_b = dataclasses.replace(config, dataset=config.forgetting.task_b, training=b_training)
        sequential_b = prepare(task_b, log)
    for name in config.strategies:
        runs = []
        for seed in experiment.seeds():
            result = folder.finished_result(name, 0, seed)
            if result is None:
                started = time.perf_counter()
                if sequential_b is not None:
                    result = run_sequential(experiment, sequential_b, name, seed, log)
                elif config.forgetting.objective == "lm":
                    result = run_causal_lm(experiment, name, seed)
                else:
                    result = run_strategy(experiment, name, seed=seed).result
                result["seconds"] = time.perf_counter() - started
                folder.save_run(name, 0, seed, result, [])
            runs.append(result)
            log(f"{name} seed {seed}: {describe_reading(result)}")
        record["strategies"][name] = {"runs": runs, **summarize_strategy(runs)}
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_label_issues(out_dir, experiment)
    folder.complete(record)
    return record


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


def run_sequential(a: Experiment, b: Experiment, name: str, seed: int, log: Log = print) -> dict[str, Any]:
    """Train task A, then task B on the same body (a new head for B, A's kept); A's test score before and after B.

    Mitigations protect A while B trains: EWC's Fisher and anchor come from the model trained on A, replay
    draws A's training examples through A's frozen head, L2-SP anchors at the weights B starts from.
    """
    from transferlab.recipes.experiment import run_strategy

    cfg = a.config.forgetting
    a_metric = a.config.training.headline_metric
    key = repr((a.config.backbone, a.config.dataset, a.config.n_train, a.config.n_test, a.config.max_length, name, seed, a.config.training))
    if key not in _TASK_A:
        first = run_strategy(a, name, seed=seed)
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


def fine_tune_causal_lm(
    lm: nn.Module,
    tokenizer: Any,
    texts: list[str],
    method: str,
    lr: float,
    epochs: float = 1,
    batch_size: int = 16,
    max_length: int = 64,
    seed: int = 0,
    regularizer: Any = None,
) -> nn.Module:
    """Fine-tune a decoder's own LM objective on `texts` ('full', or 'lora' on q_proj/v_proj, merged after).

    A plain loop (AdamW, 6% linear warm-up then linear decay, no early stopping: there is no label to
    stop on); `regularizer(model)` is added to each step's loss as in classification training.
    """
    from peft import LoraConfig, get_peft_model

    if method not in ("full", "lora"):
        raise UserError(f"causal-LM fine-tuning supports full and lora, not '{method}'")
    set_seed(seed)
    model = (
        get_peft_model(lm, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))
        if method == "lora"
        else lm
    )
    model.train()
    device = next(model.parameters()).device
    order = np.random.default_rng(seed).permutation(len(texts))
    steps = max(1, int(len(texts) * epochs) // batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    warmup = max(1, int(0.06 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    for step in range(steps):
        chosen = [texts[order[(step * batch_size + i) % len(texts)]] for i in range(batch_size)]
        batch = tokenizer(chosen, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        loss = fg._lm_nll(lambda i, m: model(input_ids=i, attention_mask=m).logits, ids, mask)[0]
        if regularizer is not None:
            loss = loss + regularizer(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return model.merge_and_unload() if method == "lora" else model


def run_causal_lm(experiment: Experiment, name: str, seed: int) -> dict[str, Any]:
    """`objective: lm`: fine-tune the decoder's own LM on the task's training texts; perplexity on general
    text and on the task's test texts, before and after."""
    from transformers import AutoModelForCausalLM

    cfg, config = experiment.config.forgetting, experiment.config
    if cfg.mitigations:
        raise UserError("mitigations apply to classification training; the LM objective runs without them")
    path, tokenizer = experiment.backbone.path, experiment.preprocessor.tokenizer
    probe_model = build_classifier(experiment.backbone, experiment.label_names, config.pooling)
    meter_for(probe_model, "perplexity")  # a decoder, or a clear error
    del probe_model
    choice, general = fg.general_texts(cfg.general_text, config.dataset, cfg.general_examples)
    task_test = [experiment.data.inputs[i] for i in experiment.split.test[: cfg.general_examples]]
    strategy = config.strategy(name)
    training = config.training_for_seed(seed)
    lm = AutoModelForCausalLM.from_pretrained(path).to(default_device())
    before = (
        fg.perplexity(lm, tokenizer, general, cfg.general_max_length),
        fg.perplexity(lm, tokenizer, task_test, cfg.general_max_length),
    )
    texts = [experiment.data.inputs[i] for i in experiment.split.train]
    lm = fine_tune_causal_lm(
        lm, tokenizer, texts, name, strategy.learning_rate(training), training.epochs, training.batch_size, config.max_length, seed
    )
    after = (fg.perplexity(lm, tokenizer, general, cfg.general_max_length), fg.perplexity(lm, tokenizer, task_test, cfg.general_max_length))
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
