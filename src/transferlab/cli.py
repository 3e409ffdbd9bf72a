"""The `transferlab` command. User errors print one line and exit with code 2."""

from __future__ import annotations

import os
import signal
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from transferlab.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Transfer learning: every adaptation strategy tried on your data, compared honestly.",
)
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # a redirected table is not cut to 80 columns

Backbone = Annotated[str | None, typer.Option(help="catalog name (see 'transferlab list'), a local model folder, or a hub id")]
Dataset = Annotated[str | None, typer.Option(help="catalog name or a .csv/.jsonl/.parquet file")]
TextColumn = Annotated[str | None, typer.Option(help="text column of your file [default: text]")]
LabelColumn = Annotated[str | None, typer.Option(help="label column of your file [default: label]")]
TestDataset = Annotated[
    str | None, typer.Option(help="your own test file (same columns): evaluated as given; training drops its inputs [default: a split]")
]
ValidationDataset = Annotated[
    str | None, typer.Option(help="your own validation file, with --test-dataset [default: carved from --dataset]")
]
NTrain = Annotated[int | None, typer.Option(help="labelled examples to learn from, validation included [default: 2000]")]
NTest = Annotated[int | None, typer.Option(help="held-out test examples [default: 1000]")]
Epochs = Annotated[float | None, typer.Option(help="training epochs [default: 3]")]
Seed = Annotated[int | None, typer.Option(help="seed for the split, the head and training [default: 0]")]
Lr = Annotated[float | None, typer.Option(help="one learning rate for every strategy [default: each strategy's own]")]
BatchSize = Annotated[int | None, typer.Option(help="training batch size [default: 16]")]
MaxLength = Annotated[int | None, typer.Option(help="tokens per example after truncation [default: 128]")]
Pooling = Annotated[str | None, typer.Option(help="auto, mean, cls or last (token) [default: auto: mean, last for a decoder]")]
Metric = Annotated[str | None, typer.Option(help="headline metric, also used for early stopping [default: accuracy]")]
FreezeBelow = Annotated[int | None, typer.Option(help="partial fine-tuning: layer groups frozen from the bottom")]
LayerDecay = Annotated[
    float | None, typer.Option(help="discriminative learning rates: eta in lr * eta^(L - l) for every strategy that trains layers")
]
Scheduler = Annotated[str | None, typer.Option(help="linear, cosine or stlr (ULMFiT's slanted triangular) [default: linear]")]
Cv = Annotated[
    int | None, typer.Option(help="stratified folds; 1 for one hold-out split [default: 5 below 1,000 training examples, else 1]")
]
Seeds = Annotated[int | None, typer.Option(help="training runs per split with seeds seed, seed+1, ... [default: 1]")]
ClassWeights = Annotated[str | None, typer.Option(help="none or balanced: weighted cross-entropy w_c = N / (C n_c) [default: none]")]
Oversample = Annotated[bool | None, typer.Option("--oversample", help="resample minority classes in the training examples")]
Imbalance = Annotated[float | None, typer.Option(help="first subsample to this minority share (0.1 makes a balanced binary set 9:1)")]
Augment = Annotated[
    str | None,
    typer.Option(
        help="comma-separated training augmentations; text: delete, swap; images: crop, flip, jitter, randaugment, mixup, or none"
    ),
]
ImageSize = Annotated[int | None, typer.Option(help="input resolution of a CNN backbone [default: 224]")]
Normalization = Annotated[
    str | None, typer.Option(help="auto (the weights' own mean/std), or force imagenet, half, none or raw (0-255) [default: auto]")
]
ImageColumn = Annotated[str | None, typer.Option(help="image path column of your table, relative to it [default: path]")]
SkipBadImages = Annotated[bool | None, typer.Option("--skip-bad-images", help="leave unreadable images out with a warning")]
OutDir = Annotated[Path | None, typer.Option("--out", help="run folder [default: runs/<command>-<time>]")]
Resume = Annotated[
    bool | None,
    typer.Option(
        "--resume/--restart",
        help="--resume: carry on the unfinished run in --out (the default when its config is the same); --restart: discard it",
    ),
]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML run config; command-line options override it")]


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress: library load reports and known-harmless warnings go."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


RUN_OPTIONS = (
    "backbone",
    "dataset",
    "test_dataset",
    "validation_dataset",
    "n_train",
    "n_test",
    "max_length",
    "pooling",
    "text_column",
    "label_column",
    "cv",
    "seeds",
    "class_weights",
    "oversample",
    "imbalance",
    "augment",
    "image_size",
    "normalization",
    "image_column",
    "skip_bad_images",
)
TRAINING_OPTIONS = ("epochs", "seed", "lr", "batch_size", "metric", "scheduler")
FORGETTING_OPTIONS = (
    "meter",
    "mitigations",
    "ewc_lambda",
    "l2sp_alpha",
    "replay_fraction",
    "task_b",
    "task_b_lr",
    "general_text",
    "objective",
)
STRATEGY_WIDE_OPTIONS = ("freeze_below", "layer_decay")


def _run_config(strategies: list[str] | None, options: dict[str, Any]):
    """The --config YAML (if any) with the command's explicit options on top."""
    from transferlab.config import load_run_config

    augment = options.get("augment")
    options = {**options, "augment": None if augment is None else [a.strip() for a in augment.split(",") if a.strip() not in ("", "none")]}
    return load_run_config(
        options["config"],
        strategy_wide={k: options[k] for k in STRATEGY_WIDE_OPTIONS},
        strategies=strategies,
        training={k: options[k] for k in TRAINING_OPTIONS},
        forgetting={k: options.get(k) for k in FORGETTING_OPTIONS},
        **{k: options.get(k) for k in RUN_OPTIONS},
    )


def _out_dir(out_dir: Path | None, command: str) -> Path:
    if out_dir:
        return out_dir
    from transferlab.distributed import broadcast

    # Under `accelerate launch` rank 0 names the folder: the processes' clocks may be a second apart.
    return Path(broadcast(f"runs/{command}-{datetime.now():%Y%m%d-%H%M%S}"))


def _quiet_unless_main() -> None:
    """Under `accelerate launch` only rank 0 reports; the other processes train silently beside it."""
    from transferlab.distributed import is_main_process

    if not is_main_process():
        console.quiet = out.quiet = True


def _progress_logger():
    return lambda message: console.print(message, style="dim", soft_wrap=True, highlight=False)


@app.command()
def compare(
    backbone: Backbone = None,
    dataset: Dataset = None,
    test_dataset: TestDataset = None,
    validation_dataset: ValidationDataset = None,
    strategies: Annotated[str | None, typer.Option(help="comma-separated names, or 'all' [default: head,full,lora]")] = None,
    n_train: NTrain = None,
    n_test: NTest = None,
    epochs: Epochs = None,
    seed: Seed = None,
    lr: Lr = None,
    batch_size: BatchSize = None,
    max_length: MaxLength = None,
    pooling: Pooling = None,
    metric: Metric = None,
    scheduler: Scheduler = None,
    freeze_below: FreezeBelow = None,
    layer_decay: LayerDecay = None,
    cv: Cv = None,
    seeds: Seeds = None,
    class_weights: ClassWeights = None,
    oversample: Oversample = None,
    imbalance: Imbalance = None,
    augment: Augment = None,
    image_size: ImageSize = None,
    normalization: Normalization = None,
    skip_bad_images: SkipBadImages = None,
    text_column: TextColumn = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    config: ConfigFile = None,
    out_dir: OutDir = None,
    resume: Resume = None,
    executor: Annotated[
        str, typer.Option(help="sequential, or ray: the independent strategy x fold x seed runs as Ray tasks, same results.json")
    ] = "sequential",
    ray_address: Annotated[str | None, typer.Option(help="a Ray cluster to join (e.g. auto) [default: start Ray on this machine]")] = None,
    ray_cpus: Annotated[int | None, typer.Option(help="CPUs for a local Ray, one run on each [default: all]")] = None,
    recommend: Annotated[
        bool,
        typer.Option(
            "--recommend",
            help="first recommend a strategy (see 'transferlab recommend'); at the end, say if it was within noise of the best",
        ),
    ] = False,
    forgetting: Annotated[
        bool, typer.Option("--forgetting", help="measure forgetting per strategy: LM perplexity for a decoder, else per-layer CKA")
    ] = False,
) -> None:
    """Try each strategy on the same split and print one row per strategy."""
    from transferlab.recipes.compare import compare as run_compare
    from transferlab.recipes.executors import make_executor
    from transferlab.report.table import print_results
    from transferlab.strategies import parse_strategy_list

    run_config = _run_config(parse_strategy_list(strategies) if strategies else None, locals())
    if forgetting and run_config.forgetting.meter is None:
        run_config.forgetting.meter = "auto"
    target = _out_dir(out_dir, "compare")
    _quiet_unless_main()
    with _training_progress() as progress:
        runner = make_executor(executor, progress, ray_address, ray_cpus)
        results = run_compare(run_config, target, log=_progress_logger(), executor=runner, recommend=recommend, resume=resume)
    print_results(results, out)
    if recommend:
        console.print(results["recommendation"]["verdict"], highlight=False)
    console.print(f"results: {target / 'results.json'}")
    failed = [name for name, r in results["strategies"].items() if r["status"] in ("failed", "diverged")]
    if failed:
        console.print(f"[red]{len(failed)} strateg{'y' if len(failed) == 1 else 'ies'} did not finish:[/red] {', '.join(failed)}")
        raise typer.Exit(1)


Mitigation = Annotated[str | None, typer.Option("--mitigation", help="comma-separated: ewc, replay, l2sp [default: none]")]


@app.command("forgetting")
def forgetting_command(
    strategy: Annotated[str, typer.Option(help="comma-separated strategy names")] = "full",
    meter: Annotated[
        str | None, typer.Option(help="perplexity (decoders), sequential (task A then task B) or cka [default: by backbone]")
    ] = None,
    mitigation: Mitigation = None,
    ewc_lambda: Annotated[float | None, typer.Option(help="EWC weight lambda [default: 1e4]")] = None,
    l2sp_alpha: Annotated[float | None, typer.Option(help="L2-SP weight alpha [default: 0.1]")] = None,
    replay_fraction: Annotated[float | None, typer.Option(help="share of each batch replayed [default: 0.25]")] = None,
    task_b: Annotated[str | None, typer.Option(help="second task of the sequential meter [default: bbc-news]")] = None,
    task_b_lr: Annotated[float | None, typer.Option(help="task B's learning rate [default: --lr]")] = None,
    general_text: Annotated[str | None, typer.Option(help="auto, bbc-news or python-docs: held-out text for perplexity")] = None,
    objective: Annotated[
        str | None, typer.Option(help="classification, or lm: fine-tune a decoder's LM on the task's texts (full or lora)")
    ] = None,
    backbone: Backbone = None,
    dataset: Dataset = None,
    seeds: Seeds = None,
    seed: Seed = None,
    n_train: NTrain = None,
    n_test: NTest = None,
    epochs: Epochs = None,
    lr: Lr = None,
    batch_size: BatchSize = None,
    max_length: MaxLength = None,
    pooling: Pooling = None,
    config: ConfigFile = None,
    out_dir: OutDir = None,
    resume: Resume = None,
) -> None:
    """Measure what fine-tuning forgets: a meter before and after each strategy, with optional mitigations (EWC, L2-SP, replay)."""
    from transferlab.evaluation.forgetting_meter import format_forgetting
    from transferlab.recipes.forgetting import run_forgetting
    from transferlab.strategies import parse_strategy_list

    mitigations = None if mitigation is None else [m.strip() for m in mitigation.split(",") if m.strip() not in ("", "none")]
    options = {"freeze_below": None, "layer_decay": None, "metric": None, "scheduler": None, **locals(), "mitigations": mitigations}
    options["meter"] = meter or "auto"
    run_config = _run_config(parse_strategy_list(strategy), options)
    target = _out_dir(out_dir, "forgetting")
    with _training_progress() as progress:
        progress("forgetting")
        results = run_forgetting(run_config, target, log=_progress_logger(), resume=resume)
    for name, summary in results["strategies"].items():
        if summary["status"] != "ok":
            out.print(f"{name}: {summary['status']}: {summary.get('reason')}", highlight=False)
            continue
        f = summary["forgetting"]
        if f["meter"] == "sequential":
            line = (
                f"task A ({results['dataset']}) {f['before']['mean']:.4f} ± {f['before']['std']:.4f} -> "
                f"{f['after']['mean']:.4f} ± {f['after']['std']:.4f} after task B ({f['b_score']['mean']:.4f})"
            )
        elif "task_perplexity" in summary:
            t = summary["task_perplexity"]
            line = f"general-text {format_forgetting(f)}; task-text ppl {t['before']['mean']:.1f} -> {t['after']['mean']:.1f}"
        else:
            line = f"{format_forgetting(f)}; task accuracy {summary['accuracy']['mean']:.4f}"
        out.print(f"{name} [{', '.join(f['mitigations']) or 'no mitigation'}]: {line}", highlight=False)
    console.print(f"results: {target / 'results.json'}")


@app.command("check")
def check_command(
    dataset: Dataset = None,
    backbone: Backbone = None,
    test_dataset: TestDataset = None,
    validation_dataset: ValidationDataset = None,
    n_train: NTrain = None,
    n_test: NTest = None,
    max_length: MaxLength = None,
    cv: Cv = None,
    seed: Seed = None,
    imbalance: Imbalance = None,
    text_column: TextColumn = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    image_size: ImageSize = None,
    normalization: Normalization = None,
    skip_bad_images: SkipBadImages = None,
    config: ConfigFile = None,
    out_dir: OutDir = None,
) -> None:
    """Check the data before training: duplicates, conflicting labels, short and cut texts, imbalance, likely label errors."""
    from transferlab.data.checks import describe
    from transferlab.recipes.check import CHECKS, check

    options = {k: None for k in ("augment", "freeze_below", "layer_decay", *TRAINING_OPTIONS)} | locals()
    run_config = _run_config(None, options)
    target = _out_dir(out_dir, "check")
    record = check(run_config, target, log=_progress_logger())
    for line in describe(record["data_checks"]):
        out.print(line, highlight=False, soft_wrap=True, markup=False)
    console.print(f"checks: {target / CHECKS}")


@app.command("recommend")
def recommend_command(
    dataset: Annotated[str, typer.Option(help="catalog name or a .csv/.jsonl/.parquet file")],
    backbone: Backbone = None,
    n_train: Annotated[int | None, typer.Option(help="labelled examples you have: a stratified subset of this size [default: all]")] = None,
    tasks: Annotated[int, typer.Option(help="tasks that will share the backbone")] = 1,
    memory_gb: Annotated[float | None, typer.Option(help="memory available for training, in GB [default: not constrained]")] = None,
    seed: Seed = None,
    text_column: TextColumn = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
) -> None:
    """Recommend a strategy and its settings from data size, a measured domain gap, tasks and memory (rules of thumb, with reasons)."""
    from transferlab.catalog import DEFAULT_BACKBONE
    from transferlab.recipes.recommend import format_recommendation, recommend

    rec = recommend(
        backbone or DEFAULT_BACKBONE,
        dataset,
        n_train,
        tasks,
        memory_gb,
        seed or 0,
        text_column or "text",
        label_column or "label",
        _progress_logger(),
        image_column or "path",
    )
    for line in format_recommendation(rec):
        out.print(line, highlight=False, soft_wrap=True)


@app.command()
def train(
    strategy: Annotated[str, typer.Option(help="one strategy name")] = "lora",
    backbone: Backbone = None,
    dataset: Dataset = None,
    test_dataset: TestDataset = None,
    validation_dataset: ValidationDataset = None,
    n_train: NTrain = None,
    n_test: NTest = None,
    epochs: Epochs = None,
    seed: Seed = None,
    lr: Lr = None,
    batch_size: BatchSize = None,
    max_length: MaxLength = None,
    pooling: Pooling = None,
    metric: Metric = None,
    scheduler: Scheduler = None,
    freeze_below: FreezeBelow = None,
    layer_decay: LayerDecay = None,
    class_weights: ClassWeights = None,
    oversample: Oversample = None,
    imbalance: Imbalance = None,
    augment: Augment = None,
    image_size: ImageSize = None,
    normalization: Normalization = None,
    skip_bad_images: SkipBadImages = None,
    text_column: TextColumn = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = None,
    keep_adapter: Annotated[bool, typer.Option(help="save the LoRA adapter instead of merging it into the weights")] = False,
    config: ConfigFile = None,
    out_dir: OutDir = None,
    resume: Resume = None,
) -> None:
    """Train one strategy and export DIR/model (safetensors, tokenizer, label names)."""
    from transferlab.recipes.train import train as run_train
    from transferlab.report.table import print_results
    from transferlab.strategies import parse_strategy_list

    run_config = _run_config(parse_strategy_list(strategy), locals())
    target = _out_dir(out_dir, "train")
    _quiet_unless_main()
    with _training_progress() as progress:
        progress(strategy)
        _, results = run_train(run_config, target, keep_adapter=keep_adapter, log=_progress_logger(), resume=resume)
    print_results(results, out)
    console.print(f"model: {target / 'model'}")


@app.command()
def predict(
    model: Annotated[Path, typer.Option(help="a DIR/model folder written by 'transferlab train'")],
    text: Annotated[list[str] | None, typer.Option(help="a text to classify; repeat for several")] = None,
    image: Annotated[list[Path] | None, typer.Option(help="an image file or a folder of images; repeat for several")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help=".csv/.jsonl/.parquet/.txt file of texts")] = None,
    text_column: Annotated[str, typer.Option(help="text column of --input")] = "text",
    label_column: Annotated[str | None, typer.Option(help="true labels in --input: also report accuracy and macro-F1")] = None,
    output: Annotated[Path | None, typer.Option(help="write predictions here (.csv or .jsonl)")] = None,
) -> None:
    """Print the label and class probabilities for each text or image."""
    from transferlab.recipes.predict import predict_command

    predict_command(model, text, image, input_file, text_column, output, out, label_column)


@app.command()
def serve(
    adapter: Annotated[
        list[str], typer.Option(help="NAME=DIR: a task and its 'train --keep-adapter' output folder (DIR/model); repeat for more")
    ],
    backbone: Annotated[str, typer.Option(help="the backbone every adapter was trained on (catalog name, folder or hub id)")],
    host: Annotated[str, typer.Option(help="address to bind; the default answers this machine only")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    max_inputs: Annotated[int, typer.Option(help="texts per request")] = 64,
    max_chars: Annotated[int, typer.Option(help="characters per text")] = 2000,
    max_batch: Annotated[int, typer.Option(help="texts per forward pass, gathered from concurrent requests")] = 64,
    batch_wait_ms: Annotated[float, typer.Option(help="how long a request waits for others to share its forward pass")] = 5.0,
) -> None:
    """Answer POST /v1/predict for many tasks from one backbone held in memory once (docs at /docs)."""
    import uvicorn

    from transferlab.serve.app import Limits, create_app
    from transferlab.serve.tasks import MultiTaskModel, parse_adapter_options

    if min(max_inputs, max_chars, max_batch) < 1 or batch_wait_ms < 0:
        raise UserError("--max-inputs, --max-chars and --max-batch must be at least 1, --batch-wait-ms not negative")
    model = MultiTaskModel(backbone, parse_adapter_options(adapter))
    limits = Limits(max_inputs=max_inputs, max_chars=max_chars, max_batch=max_batch, max_wait_ms=batch_wait_ms)
    console.print(f"serving {', '.join(model.tasks)} over {backbone} on http://{host}:{port} (API docs at /docs)")
    uvicorn.run(create_app(model, limits), host=host, port=port, log_level="warning")


@app.command()
def study(
    name: Annotated[
        str, typer.Argument(help="lr-sweep, epochs, discriminative-lr, layer-probe, lora-rank, learning-curve, model-size or forgetting")
    ],
    backbone: Backbone = None,
    dataset: Dataset = None,
    test_dataset: TestDataset = None,
    validation_dataset: ValidationDataset = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    quick: Annotated[bool, typer.Option("--quick", help="one seed and a smaller budget: under 10 minutes on 2 cores")] = False,
    seeds: Annotated[int | None, typer.Option(help="runs per point [default: 3, 1 with --quick]")] = None,
    n_train: Annotated[int | None, typer.Option(help="labelled examples [default: the study's budget]")] = None,
    n_test: Annotated[int | None, typer.Option(help="held-out test examples [default: the study's budget]")] = None,
    epochs: Annotated[float | None, typer.Option(help="training epochs [default: the study's budget]")] = None,
    out_dir: OutDir = None,
    resume: Resume = None,
) -> None:
    """Run one of the classic transfer-learning experiments and say, with numbers, whether the expected result held."""
    from transferlab.report.table import print_results
    from transferlab.studies import get_study, run_study, study_config

    chosen = get_study(name)
    files = {
        "test_dataset": test_dataset,
        "validation_dataset": validation_dataset,
        "text_column": text_column,
        "label_column": label_column,
    }
    config = study_config(chosen, quick, backbone, dataset, seeds, n_train, n_test, epochs, files)
    target = _out_dir(out_dir, f"study-{name}")
    _quiet_unless_main()
    with _training_progress() as progress:
        progress(name)
        results = run_study(chosen, config, target, quick=quick, log=_progress_logger(), resume=resume)
    print_results(results, out)
    expectation = results["study"]["expectation"]
    out.print(f"{chosen.expected_result}: {expectation['outcome']}. {expectation['verdict']}", highlight=False, soft_wrap=True)
    console.print(f"report: {target / 'report.html'}")


@app.command()
def report(directory: Annotated[Path, typer.Argument(help="a run folder holding results.json")]) -> None:
    """Rebuild report.html and report.md from a run folder's results.json, without retraining."""
    from transferlab.report import rebuild_report

    console.print(f"report: {rebuild_report(directory)}")


@app.command("lr-table")
def lr_table(
    layers: Annotated[int, typer.Option(help="number of layers L")] = 6,
    lr: Annotated[float, typer.Option(help="base learning rate (the head's)")] = 3e-5,
    eta: Annotated[float, typer.Option(help="decay factor per layer")] = 0.95,
) -> None:
    """Discriminative learning rates lr * eta^(L - l), head first (ULMFiT's discriminative fine-tuning)."""
    from rich.table import Table

    from transferlab.strategies.base import layer_lr_table

    if layers < 1 or lr <= 0 or not 0 < eta <= 1:
        raise UserError("lr-table needs --layers >= 1, --lr > 0 and 0 < --eta <= 1")
    names = ["Embeddings"] + [f"Layer {i}" for i in range(1, layers + 1)] + ["Head (classifier)"]
    table = Table("layer", "learning rate")
    for name, rate in reversed(layer_lr_table(names, lr, eta)):
        table.add_row(name, f"{rate:.2e}")
    out.print(table)


@app.command("list")
def list_assets() -> None:
    """Backbones, datasets and strategies known by name."""
    from transferlab.catalog import BACKBONES
    from transferlab.data.catalog import DATASETS
    from transferlab.strategies import STRATEGIES

    out.print("[bold]backbones[/bold] (or a local Hugging Face or timm model folder, a hub id, or timm:NAME=FILE / torchvision:NAME=FILE)")
    for name, entry in BACKBONES.items():
        out.print(f"  {name:<14} {entry.description}")
    out.print("[bold]datasets[/bold] (or your own .csv/.jsonl/.parquet with --text-column/--label-column, or a folder of class folders)")
    for name, entry in DATASETS.items():
        out.print(f"  {name:<14} {entry.description}")
    out.print("[bold]strategies[/bold]")
    for name, cls in STRATEGIES.items():
        out.print(f"  {name:<14} {cls.summary}")


class _training_progress:
    """A rich progress bar over training steps, fed by the Trainer through `transferlab.training.loop`."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from transferlab.training import loop

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
        )
        self._progress.start()
        self._task = None

        def on_step(step: int, total: int) -> None:
            if self._task is not None:
                self._progress.update(self._task, completed=step, total=total)

        loop.PROGRESS_HOOKS.append(on_step)
        self._hook = on_step
        return self._start

    def _start(self, name: str) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(name, total=None)

    def __exit__(self, *exc: object) -> None:
        from transferlab.training import loop

        loop.PROGRESS_HOOKS.remove(self._hook)
        self._progress.stop()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped job unwinds like Ctrl-C: checkpoints kept, nothing half-written
    try:
        code = app(standalone_mode=False)  # a command's `typer.Exit(n)` comes back as n
    except UserError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted: the same command with the same --out resumes where it stopped")
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as err:  # usage errors: unknown option, bad value
        err.show()
        sys.exit(err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
