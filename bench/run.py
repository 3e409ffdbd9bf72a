"""`make bench`: transferlab against a plain Hugging Face Trainer script, measured in the same run.

The baseline is written the way the Hugging Face docs teach: AutoModelForSequenceClassification
(CLS pooler head), `datasets.map` tokenisation, DataCollatorWithPadding, Trainer; peft for LoRA;
a frozen base model for feature extraction. Both sides get the same examples (transferlab keeps
10% of its training examples for validation; the baseline trains on all of them), the same
epochs, batch size and token limit. transferlab's side is one real `compare` run (shared
preparation, a run folder with resumable checkpoints), each strategy timed as it runs. The dense
fp32 matmul throughput is measured in the same run and full fine-tuning's model FLOP utilisation
is reported against it. Then: the layer-probe study against one forward pass over the same
sentences, wall time of `head` and `full` at three training-set sizes with the fitted slope, and
LoRA against full fine-tuning's peak memory on mpnet-base (each in a fresh process).

    python bench/run.py [--n-train 2000] [--n-test 1000] [--epochs 2] [--scaling 500,2000,8000]
                        [--memory-backbone mpnet-base] [--out runs/bench/benchmarks.json]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

from transferlab.backbones import build_classifier, resolve_backbone
from transferlab.config import load_run_config
from transferlab.data.catalog import load_dataset
from transferlab.recipes.compare import compare
from transferlab.recipes.executors import Sequential
from transferlab.recipes.experiment import prepare, run_strategy
from transferlab.studies import get_study, study_config
from transferlab.training.inference import cpu_has_bf16, map_batches, precision_in_use
from transferlab.training.memory import PeakMemory

BASELINE_LR = {"head": 1e-3, "full": 2e-5, "lora": 5e-4}


def matmul_gflops(size: int = 2048, repeats: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """The fastest of `repeats` timed products: on this shared machine the mean of ten moved by 1.7x between runs
    (bf16 229 and 392 GFLOP/s), and a peak measured low makes every utilisation against it look high."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    fastest = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        fastest = min(fastest, time.perf_counter() - started)
    return 2 * size**3 / fastest / 1e9


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


class TimedJobs(Sequential):
    """compare's default executor, with each job's wall time and peak memory taken as it runs."""

    def __init__(self):
        super().__init__()
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}
        self.history: dict[str, list[dict]] = {}

    def map(self, experiment, jobs, out_dir):
        runs = super().map(experiment, jobs, out_dir)
        for job in jobs:
            started = time.perf_counter()
            with PeakMemory() as memory:
                outcome = next(runs)
            self.seconds[job.strategy] = time.perf_counter() - started
            self.peak_mb[job.strategy] = memory.peak_mb
            self.history[job.strategy] = outcome.log_history
            yield outcome


def scaling(sizes: list[int], n_test: int, epochs: int, max_length: int, strategies=("head", "full")) -> dict:
    """Wall time of one run per strategy and training-set size (preparation excluded), and the fitted
    slope: seconds per 1,000 more sentences, and the exponent of time against size (1 = linear)."""
    seconds: dict[str, list[float]] = {name: [] for name in strategies}
    for n in sizes:
        config = bench_config(list(strategies), n, n_test, epochs, max_length)
        experiment = prepare(config, log=lambda _: None)
        for name in strategies:
            started = time.perf_counter()
            run_strategy(experiment, name)
            seconds[name].append(time.perf_counter() - started)
            print(f"scaling: {name} on {n} sentences: {seconds[name][-1]:.1f}s")
    fits = {}
    for name, times in seconds.items():
        per_sentence, _ = np.polyfit(sizes, times, 1)
        exponent, _ = np.polyfit(np.log(sizes), np.log(times), 1)
        fits[name] = {"seconds": times, "seconds_per_1000": 1000 * per_sentence, "exponent": exponent}
    return {"sizes": sizes, "strategies": fits}


def layer_probe_timing(n_train: int, n_test: int, max_length: int) -> dict:
    """The layer-probe study's work (one forward pass keeping every hidden state, then a cross-validated
    probe per layer) against one plain forward pass over the same examples."""
    study = get_study("layer-probe")
    config = study_config(study, quick=False, seeds=1, n_train=n_train, n_test=n_test)
    config.max_length = max_length
    experiment = prepare(config, log=lambda _: None)
    pre, split = experiment.preprocessor, experiment.split
    model = build_classifier(experiment.backbone, experiment.label_names, config.pooling)
    examples = experiment.features(np.concatenate([split.train, split.val, split.test]))
    started = time.perf_counter()
    map_batches(model, examples, pre.collate, lambda m, b: m(**b).logits, pre.length_of, config.training.eval_batch_size)
    forward = time.perf_counter() - started

    class Prepared:  # the study's context, with the experiment already prepared
        def experiment(self, point):
            return experiment

    started = time.perf_counter()
    outcomes = list(study.run_points(Prepared(), study.points(False), log=lambda _: None))
    probe = time.perf_counter() - started
    return {
        "examples": len(examples),
        "layers": len(outcomes),
        "forward_seconds": forward,
        "probe_seconds": probe,
        "ratio": probe / forward,
    }


def frozen_cache_timing(strategy: str, n_train: int, n_test: int, epochs: int, max_length: int, **data: str) -> dict:
    """`partial` (its default: all but the top two layer groups and the head frozen) or `gradual` (its four stages)
    with the frozen groups computed once per example and with them computed at every step, on the same split.
    `data` names another backbone and data set (a CNN: its stages, each image and its flip cached)."""
    runs = {}
    for cached in (True, False):
        settings = {strategy: {"cache_frozen": cached}}
        config = bench_config([strategy], n_train, n_test, epochs, max_length, strategy_settings=settings, **data)
        experiment = prepare(config, log=lambda _: None)
        started = time.perf_counter()
        run = run_strategy(experiment, strategy)
        runs["cached" if cached else "computed"] = {"seconds": time.perf_counter() - started, "accuracy": run.result["metrics"]["accuracy"]}
    return runs | {"ratio": runs["cached"]["seconds"] / runs["computed"]["seconds"]}


def _peak_of_run(backbone: str, strategy: str, n_train: int, max_length: int) -> dict:
    config = bench_config([strategy], n_train, 100, 1, max_length, backbone=backbone)
    experiment = prepare(config, log=lambda _: None)
    with PeakMemory() as memory:
        run = run_strategy(experiment, strategy)
    return {"peak_memory_mb": memory.peak_mb, "trainable_params": run.result["trainable_params"]}


def memory_by_strategy(backbone: str, strategies: list[str], n_train: int, max_length: int) -> dict:
    """Peak memory of each strategy's run, each in a fresh process (the CPU allocator keeps what an
    earlier run freed, so runs in one process would hide each other's peaks)."""
    context = multiprocessing.get_context("spawn")
    out = {}
    for name in strategies:
        with context.Pool(1) as pool:
            out[name] = pool.apply(_peak_of_run, (backbone, name, n_train, max_length))
        print(f"memory: {backbone} {name}: {out[name]['peak_memory_mb']:.0f} MB")
    return out


def bench_config(
    strategies: list[str],
    n_train: int,
    n_test: int,
    epochs: int,
    max_length: int,
    backbone: str | None = None,
    precision: str = "auto",
    strategy_settings: dict | None = None,
    **data: str,
):
    return load_run_config(
        None,
        strategies=strategies,
        strategy_settings=strategy_settings or {},
        cv=1,
        n_train=n_train,
        n_test=n_test,
        max_length=max_length,
        training={"epochs": epochs, "batch_size": 16, "precision": precision},
        **({"backbone": backbone} if backbone else {}),
        **data,
    )


def timed_compare(config, out_dir: Path) -> tuple[dict, float, TimedJobs]:
    """One real `compare` run: per strategy its wall time, accuracy, peak memory and training seconds; the whole run's seconds."""
    jobs = TimedJobs()
    started = time.perf_counter()
    results = compare(config, out_dir, log=print, executor=jobs, resume=False)
    seconds = time.perf_counter() - started
    rows = {
        name: {
            "seconds": jobs.seconds[name],
            "accuracy": row["metrics"]["accuracy"]["mean"],
            "peak_memory_mb": jobs.peak_mb[name],
            "train_seconds": row["train_seconds"],
        }
        for name, row in results["strategies"].items()
    }
    return rows, seconds, jobs


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
    parser.add_argument("--scaling", default="500,2000,8000", help="training-set sizes for the scaling fit ('' to skip)")
    parser.add_argument("--layer-probe", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--frozen-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="partial fine-tuning with and without its frozen-layer cache",
    )
    parser.add_argument(
        "--other-precision",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a second compare run in the precision the default did not take (fp32 or bf16), where the CPU computes bf16",
    )
    parser.add_argument("--memory-backbone", default="mpnet-base", help="LoRA vs full peak memory on this backbone ('' to skip)")
    args = parser.parse_args()
    strategies = args.strategies.split(",")
    if args.frozen_cache:  # the CNN timings come last: a missing dataset should stop the run now, not after 15 minutes
        load_dataset("fashion-mnist", modality="image")

    peak_gflops = {"fp32": matmul_gflops(), **({"bf16": matmul_gflops(dtype=torch.bfloat16)} if cpu_has_bf16() else {})}
    # First, while the process has run nothing else, as in `transferlab study layer-probe`: timed after the
    # runs below, the study's time beyond the forward pass was 6.3 s, against about 4.4 s in a fresh process.
    probe = layer_probe_timing(args.n_train, args.n_test, args.max_length) if args.layer_probe else None
    config = bench_config(strategies, args.n_train, args.n_test, args.epochs, args.max_length)
    workdir = args.out.parent
    default_precision = precision_in_use("auto")
    ours, compare_seconds, jobs = timed_compare(config, workdir / "compare")
    other = None
    if args.other_precision and cpu_has_bf16() and not torch.cuda.is_available():
        other_precision = "fp32" if default_precision == "bf16" else "bf16"
        config_other = bench_config(strategies, args.n_train, args.n_test, args.epochs, args.max_length, precision=other_precision)
        other, other_compare_seconds, other_jobs = timed_compare(config_other, workdir / f"compare-{other_precision}")

    experiment = prepare(config, log=lambda _: None)  # the same split again, for the baseline's texts
    train, val, test = (experiment.split.part(name) for name in ("train", "val", "test"))
    train_texts, train_labels = train.inputs + val.inputs, train.labels.tolist() + val.labels.tolist()
    model_path = resolve_backbone(config.backbone).path
    theirs = {
        name: baseline(
            name, model_path, train_texts, train_labels, test.inputs, test.labels.tolist(), args.epochs, args.max_length, workdir
        )
        for name in strategies
    }

    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)

    def utilisation(rows: dict, history: TimedJobs, precision: str) -> float | None:
        """Full fine-tuning's model FLOP utilisation (forward 2N per token, training 3x) against the matmul peak
        of the precision it trained in."""
        if "full" not in rows or precision not in peak_gflops:  # the peaks are the CPU's
            return None
        tokens = _trained_tokens(history.history["full"], experiment)
        return 6 * non_embedding * tokens / rows["full"]["train_seconds"] / 1e9 / peak_gflops[precision]

    mfu = utilisation(ours, jobs, default_precision)
    sizes = [int(n) for n in args.scaling.split(",")] if args.scaling else []
    report = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "matmul_gflops": peak_gflops},
        "precision": default_precision,
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
        "other_precision": None
        if other is None
        else {
            "precision": other_precision,
            "strategies": {
                name: {
                    **row,
                    "time_ratio": row["seconds"] / theirs[name]["seconds"],
                    "accuracy_gain": row["accuracy"] - theirs[name]["accuracy"],
                }
                for name, row in other.items()
            },
            "compare_seconds": other_compare_seconds,
            "compare_ratio_to_baseline_sum": other_compare_seconds / sum(t["seconds"] for t in theirs.values()),
            "full_model_flop_utilisation": utilisation(other, other_jobs, other_precision),
        },
        "compare_seconds": compare_seconds,
        "compare_ratio_to_baseline_sum": compare_seconds / sum(t["seconds"] for t in theirs.values()),
        "full_model_flop_utilisation": mfu,
        "layer_probe": probe,
        "frozen_cache": {
            **{
                strategy: frozen_cache_timing(strategy, args.n_train, args.n_test, args.epochs, args.max_length)
                for strategy in ("partial", "gradual")
            },
            # a CNN with its default flips, at the size of the image comparisons in docs/findings.md
            **{
                f"{strategy} mobilenet-v2": frozen_cache_timing(
                    strategy, 2000, 1000, 3, args.max_length, backbone="mobilenet-v2", dataset="fashion-mnist"
                )
                for strategy in ("partial", "gradual")
            },
        }
        if args.frozen_cache
        else None,
        # 500 test sentences: rt-polarity's 8,530 leave 7,530 for training beside 1,000
        "scaling": scaling(sizes, 500, args.epochs, args.max_length) if sizes else None,
        "memory": memory_by_strategy(args.memory_backbone, ["lora", "full"], 200, args.max_length) if args.memory_backbone else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print("matmul peak " + ", ".join(f"{name} {gflops:.0f} GFLOP/s" for name, gflops in peak_gflops.items()))
    print(f"default run in {default_precision}:")
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
        print(f"full fine-tuning model FLOP utilisation: {mfu:.1%} of the measured {default_precision} matmul peak")
    if second := report["other_precision"]:
        print(f"with training.precision: {second['precision']}:")
        for name, r in second["strategies"].items():
            print(
                f"{name:<8} {r['seconds']:8.1f} {theirs[name]['seconds']:8.1f} {r['time_ratio']:6.2f} {r['accuracy']:9.3f} {theirs[name]['accuracy']:9.3f}"
            )
        print(f"compare, {second['precision']}: {second['compare_ratio_to_baseline_sum']:.2f} x the baseline sum")
        if second["full_model_flop_utilisation"] is not None:
            print(
                f"full fine-tuning model FLOP utilisation: {second['full_model_flop_utilisation']:.1%} of the measured "
                f"{second['precision']} matmul peak"
            )
    if probe := report["layer_probe"]:
        print(
            f"layer-probe over {probe['layers']} hidden states: {probe['probe_seconds']:.1f}s = {probe['ratio']:.2f} x "
            f"one forward pass ({probe['forward_seconds']:.1f}s) over the same {probe['examples']} sentences"
        )
    for strategy, cache in (report["frozen_cache"] or {}).items():
        cached, computed = cache["cached"], cache["computed"]
        print(
            f"{strategy} with its frozen layer groups cached: {cached['seconds']:.1f}s (acc {cached['accuracy']:.3f}) against "
            f"{computed['seconds']:.1f}s computed at every step (acc {computed['accuracy']:.3f}) = {cache['ratio']:.2f} x"
        )
    if scale := report["scaling"]:
        for name, fit in scale["strategies"].items():
            times = ", ".join(f"{n}: {t:.1f}s" for n, t in zip(scale["sizes"], fit["seconds"]))
            print(f"scaling {name}: {times}; {fit['seconds_per_1000']:.1f}s per 1,000 sentences, time ~ n^{fit['exponent']:.2f}")
    if memory := report["memory"]:
        lora, full = memory["lora"]["peak_memory_mb"], memory["full"]["peak_memory_mb"]
        print(f"{args.memory_backbone} peak memory: lora {lora:.0f} MB, full {full:.0f} MB = {lora / full:.2f} x")


if __name__ == "__main__":
    main()
