"""`make bench`: transferlab against a plain Hugging Face Trainer script, measured in the same run.

The baseline is written the way the Hugging Face docs teach: AutoModelForSequenceClassification
(CLS pooler head), `datasets.map` tokenisation, DataCollatorWithPadding, Trainer; peft for LoRA;
a frozen base model for feature extraction. Both sides get the same examples (transferlab keeps
10% of its training examples for validation; the baseline trains on all of them), the same
epochs, batch size and token limit. The dense fp32 matmul throughput is measured in the same run
and full fine-tuning's model FLOP utilisation is reported against it.

    python bench/run.py [--n-train 2000] [--n-test 1000] [--epochs 2] [--out docs/benchmarks.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

from transferlab.catalog import resolve_backbone
from transferlab.config import load_run_config
from transferlab.recipes.compare import prepare, run_strategy
from transferlab.training.memory import PeakMemory

BASELINE_LR = {"head": 1e-3, "full": 2e-5, "lora": 5e-4}


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def baseline(
    strategy: str, model_path: str, train_texts, train_labels, test_texts, test_labels, epochs: int, max_length: int, workdir: Path
) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    train_ds = Dataset.from_dict({"text": train_texts, "label": train_labels}).map(tokenize, batched=True)
    test_ds = Dataset.from_dict({"text": test_texts, "label": test_labels}).map(tokenize, batched=True)
    started = time.perf_counter()
    with PeakMemory() as memory:
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
        if strategy == "head":
            for p in model.base_model.parameters():
                p.requires_grad = False
        elif strategy == "lora":
            model = get_peft_model(
                model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"])
            )
        args = TrainingArguments(
            output_dir=str(workdir / f"baseline-{strategy}"),
            num_train_epochs=epochs,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=64,
            learning_rate=BASELINE_LR[strategy],
            weight_decay=0.01,
            warmup_steps=0.06,
            save_strategy="no",
            report_to=[],
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tokenizer))
        trainer.train()
        logits = trainer.predict(test_ds).predictions
    seconds = time.perf_counter() - started
    accuracy = float((np.asarray(logits).argmax(-1) == np.asarray(test_labels)).mean())
    return {"seconds": seconds, "accuracy": accuracy, "peak_memory_mb": memory.peak_mb}


def transferlab_side(experiment, strategy: str) -> dict:
    started = time.perf_counter()
    with PeakMemory() as memory:
        run = run_strategy(experiment, strategy)
    return {
        "seconds": time.perf_counter() - started,
        "accuracy": run.result["metrics"]["accuracy"],
        "peak_memory_mb": memory.peak_mb,
        "train_seconds": run.result["train_seconds"],
        "trained_tokens": _trained_tokens(run.log_history, experiment),
    }


def _trained_tokens(history, experiment) -> int:
    """Tokens (padding excluded) seen in training: epochs actually run x tokens per epoch."""
    epochs = max((entry.get("epoch", 0) for entry in history), default=0)
    per_epoch = sum(len(f["input_ids"]) for f in experiment.features(experiment.split.train))
    return int(epochs * per_epoch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--strategies", default="head,lora,full")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/benchmarks.json"))
    args = parser.parse_args()
    strategies = args.strategies.split(",")

    peak_gflops = matmul_gflops()
    config = load_run_config(
        None,
        strategies=strategies,
        cv=1,
        n_train=args.n_train,
        n_test=args.n_test,
        max_length=args.max_length,
        training={"epochs": args.epochs, "batch_size": 16},
    )
    compare_started = time.perf_counter()
    experiment = prepare(config, log=print)
    ours = {name: transferlab_side(experiment, name) for name in strategies}
    compare_seconds = time.perf_counter() - compare_started

    train, val, test = (experiment.split.part(name) for name in ("train", "val", "test"))
    train_texts, train_labels = train.inputs + val.inputs, train.labels.tolist() + val.labels.tolist()
    model_path = resolve_backbone(config.backbone).path
    workdir = args.out.parent
    theirs = {
        name: baseline(
            name, model_path, train_texts, train_labels, test.inputs, test.labels.tolist(), args.epochs, args.max_length, workdir
        )
        for name in strategies
    }

    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    full = ours.get("full")
    mfu = None
    if full:
        flops = 6 * non_embedding * full["trained_tokens"]  # forward 2 N per token, training 3 x forward
        mfu = flops / full["train_seconds"] / 1e9 / peak_gflops
    report = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "matmul_gflops": peak_gflops},
        "setup": vars(args) | {"out": str(args.out)},
        "strategies": {
            name: {
                "transferlab": ours[name],
                "baseline": theirs[name],
                "time_ratio": ours[name]["seconds"] / theirs[name]["seconds"],
                "accuracy_gain": ours[name]["accuracy"] - theirs[name]["accuracy"],
            }
            for name in strategies
        },
        "compare_seconds": compare_seconds,
        "compare_ratio_to_baseline_sum": compare_seconds / sum(t["seconds"] for t in theirs.values()),
        "full_model_flop_utilisation": mfu,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"matmul peak {peak_gflops:.0f} GFLOP/s")
    print(f"{'strategy':<8} {'ours s':>8} {'base s':>8} {'ratio':>6} {'ours acc':>9} {'base acc':>9} {'ours MB':>8} {'base MB':>8}")
    for name, r in report["strategies"].items():
        o, b = r["transferlab"], r["baseline"]
        print(
            f"{name:<8} {o['seconds']:8.1f} {b['seconds']:8.1f} {r['time_ratio']:6.2f} {o['accuracy']:9.3f} {b['accuracy']:9.3f} {o['peak_memory_mb']:8.0f} {b['peak_memory_mb']:8.0f}"
        )
    print(
        f"compare (all strategies, shared preparation): {compare_seconds:.1f}s = {report['compare_ratio_to_baseline_sum']:.2f} x the baseline sum"
    )
    if mfu is not None:
        print(f"full fine-tuning model FLOP utilisation: {mfu:.1%} of the measured matmul peak")


if __name__ == "__main__":
    main()
