"""The commands that run experiments: compare, forgetting, check, train, auto and study.

Their run options come from the run config's fields (`options.py`): each command only names the ones it takes.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from transferlab.cli.common import console, out, out_dir, progress_logger, quiet_unless_main, training_progress
from transferlab.cli.options import build_run_config, config_options
from transferlab.errors import UserError
from transferlab.runio import MODEL_DIR

DATA = ("backbone", "dataset", "test_dataset", "validation_dataset", "n_train", "n_test")
TRAINING = (
    "epochs",
    "seed",
    "lr",
    "batch_size",
    "max_length",
    "pooling",
    "metric",
    "calibration",
    "threshold",
    "scheduler",
    "precision",
    "freeze_below",
    "layer_decay",
)
IMBALANCE = ("class_weights", "oversample", "imbalance")
IMAGES = ("augment", "image_size", "normalization", "skip_bad_images")
COLUMNS = ("text_column", "image_column", "label_column", "label_separator", "label_columns")
RUN_FOLDER = ("config", "out_dir", "resume")
FORGETTING = ("meter", "mitigations", "ewc_lambda", "l2sp_alpha", "replay_fraction", "task_b", "task_b_lr", "general_text", "objective")
STUDY_FILES = ("test_dataset", "validation_dataset", "text_column", "label_column", "label_separator", "label_columns")

Options = dict[str, Any]
RayAddress = Annotated[str | None, typer.Option(help="a Ray cluster to join (e.g. auto) [default: start Ray on this machine]")]
RayCpus = Annotated[int | None, typer.Option(help="CPUs for a local Ray, one run on each [default: all]")]
TRIALS_SHOWN = 8  # auto's best trials printed; leaderboard.csv has them all


@config_options(*DATA, *TRAINING, "cv", "seeds", *IMBALANCE, *IMAGES, *COLUMNS, *RUN_FOLDER)
def compare(
    strategies: Annotated[str | None, typer.Option(help="comma-separated names, or 'all' [default: head,full,lora]")] = None,
    *,
    options: Options,
    executor: Annotated[
        str, typer.Option(help="sequential, or ray: the independent strategy x fold x seed runs as Ray tasks, same results.json")
    ] = "sequential",
    ray_address: RayAddress = None,
    ray_cpus: RayCpus = None,
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
    from transferlab.recipes.experiment import forgo_onednn_cache_unless_training
    from transferlab.report.table import print_results
    from transferlab.strategies import parse_strategy_list

    run_config = build_run_config(options, parse_strategy_list(strategies) if strategies else None)
    forgo_onednn_cache_unless_training(run_config.strategies)
    if forgetting and run_config.forgetting.meter is None:
        run_config.forgetting.meter = "auto"
    target = out_dir(options["out_dir"], "compare")
    quiet_unless_main()
    with training_progress() as progress:
        runner = make_executor(executor, progress, ray_address, ray_cpus)
        results = run_compare(run_config, target, log=progress_logger(), executor=runner, recommend=recommend, resume=options["resume"])
    print_results(results, out)
    if recommend:
        console.print(results["recommendation"]["verdict"], highlight=False)
    console.print(f"results: {target / 'results.json'}")
    _exit_if_any_failed(results)


def _exit_if_any_failed(results: dict[str, Any]) -> None:
    """Exit code 1 when a strategy failed or diverged (the others were still run and recorded)."""
    failed = [name for name, r in results["strategies"].items() if r["status"] in ("failed", "diverged")]
    if failed:
        console.print(f"[red]{len(failed)} strateg{'y' if len(failed) == 1 else 'ies'} did not finish:[/red] {', '.join(failed)}")
        raise typer.Exit(1)


@config_options(
    *FORGETTING, "backbone", "dataset", "seeds", "seed", "n_train", "n_test", "epochs", "lr", "batch_size", "max_length", "pooling",
    *RUN_FOLDER,
)  # fmt: skip
def forgetting_command(
    strategy: Annotated[str | None, typer.Option(help="comma-separated strategy names [default: the config's, else full]")] = None,
    *,
    options: Options,
) -> None:
    """Measure what fine-tuning forgets: a meter before and after each strategy, with optional mitigations (EWC, L2-SP, replay)."""
    from transferlab.recipes.forgetting import run_forgetting
    from transferlab.results import format_forgetting
    from transferlab.strategies import parse_strategy_list

    run_config = build_run_config(options, parse_strategy_list(strategy) if strategy else None, default_strategies=["full"])
    if run_config.forgetting.meter is None:
        run_config.forgetting.meter = "auto"
    target = out_dir(options["out_dir"], "forgetting")
    with training_progress() as progress:
        progress("forgetting")
        results = run_forgetting(run_config, target, log=progress_logger(), resume=options["resume"])
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
    _exit_if_any_failed(results)


@config_options(
    "dataset", "backbone", "test_dataset", "validation_dataset", "n_train", "n_test", "max_length", "cv", "seed", "imbalance",
    *COLUMNS, "image_size", "normalization", "skip_bad_images", "config", "out_dir",
)  # fmt: skip
def check_command(*, options: Options) -> None:
    """Check the data before training: duplicates, conflicting labels, short and cut texts, imbalance, likely label errors."""
    from transferlab.data.checks import describe
    from transferlab.recipes.check import CHECKS, check
    from transferlab.recipes.experiment import forgo_onednn_cache_unless_training

    run_config = build_run_config(options)
    forgo_onednn_cache_unless_training([])
    target = out_dir(options["out_dir"], "check")
    record = check(run_config, target, log=progress_logger())
    for line in describe(record["data_checks"]):
        out.print(line, highlight=False, soft_wrap=True, markup=False)
    console.print(f"checks: {target / CHECKS}")


@config_options(*DATA, *TRAINING, *IMBALANCE, *IMAGES, *COLUMNS, *RUN_FOLDER)
def train(
    strategy: Annotated[str | None, typer.Option(help="one strategy name [default: the config's, else lora]")] = None,
    *,
    options: Options,
    keep_adapter: Annotated[bool, typer.Option(help="save the LoRA adapter instead of merging it into the weights")] = False,
    export_format: Annotated[
        str | None,
        typer.Option(help="also export the model as these, comma-separated, into DIR/<format>: onnx, onnx-int8, sentence-transformers"),
    ] = None,
) -> None:
    """Train one strategy and export DIR/model (safetensors, tokenizer, label names), and as --export-format says."""
    from transferlab.recipes.experiment import forgo_onednn_cache_unless_training
    from transferlab.recipes.train import train as run_train
    from transferlab.report.table import print_results
    from transferlab.strategies import parse_strategy_list

    run_config = build_run_config(options, parse_strategy_list(strategy) if strategy else None, default_strategies=["lora"])
    forgo_onednn_cache_unless_training(run_config.strategies)
    target = out_dir(options["out_dir"], "train")
    quiet_unless_main()
    with training_progress() as progress:
        progress(",".join(run_config.strategies))
        formats = [fmt.strip() for fmt in (export_format or "").split(",") if fmt.strip()]
        _, results = run_train(
            run_config, target, keep_adapter=keep_adapter, log=progress_logger(), resume=options["resume"], export_formats=formats
        )
    print_results(results, out)
    console.print(f"model: {target / MODEL_DIR}")


@config_options(*DATA, *TRAINING, "seeds", *IMBALANCE, *IMAGES, *COLUMNS, *RUN_FOLDER)
def auto(
    budget: Annotated[str, typer.Option(help="time for the search: 20m, 90s, 1h30m, or a number of minutes")] = "20m",
    strategies: Annotated[
        str | None, typer.Option(help="comma-separated names the search chooses from, or 'all' [default: the config's, else all]")
    ] = None,
    *,
    options: Options,
    max_trials: Annotated[int | None, typer.Option(help="stop after this many trials, even within the budget [default: no limit]")] = None,
    export_format: Annotated[
        str | None,
        typer.Option(help="also export the winner as these, comma-separated, into DIR/<format>: onnx, onnx-int8, sentence-transformers"),
    ] = None,
    executor: Annotated[
        str, typer.Option(help="sequential, or ray: trials train side by side on Ray workers (one per CPU), the same search")
    ] = "sequential",
    ray_address: RayAddress = None,
    ray_cpus: RayCpus = None,
) -> None:
    """Search strategies x learning rate (x rank) within a time budget, choosing on validation; test and export the winner."""
    from transferlab.recipes.auto import auto as run_auto
    from transferlab.recipes.auto import parse_budget
    from transferlab.recipes.executors import make_executor
    from transferlab.report.table import print_results
    from transferlab.results import describe_settings, ranked_trials
    from transferlab.strategies import parse_strategy_list

    seconds = parse_budget(budget)
    if max_trials is not None and max_trials < 1:
        raise UserError(f"--max-trials must be at least 1, got {max_trials}")
    run_config = build_run_config(
        options, parse_strategy_list(strategies) if strategies else None, default_strategies=parse_strategy_list("all")
    )
    target = out_dir(options["out_dir"], "auto")
    quiet_unless_main()
    with training_progress() as progress:
        progress("auto")
        formats = [fmt.strip() for fmt in (export_format or "").split(",") if fmt.strip()]
        runner = make_executor(executor, progress, ray_address, ray_cpus)
        results = run_auto(
            run_config,
            target,
            seconds,
            log=progress_logger(),
            resume=options["resume"],
            max_trials=max_trials,
            formats=formats,
            executor=runner,
        )
    search = results["search"]
    if search["trials"]:
        out.print(f"search: {len(search['trials'])} trials in {search['seconds'] / 60:.1f} min; validation {search['metric']}, best first:")
    for row in ranked_trials(search)[:TRIALS_SHOWN]:
        score = "failed" if row["validation"] is None else f"{row['validation']:.4f}"
        out.print(
            f"  {row['trial']:>3}  {row['strategy']:<16} {score}  {row['state']:<9} {describe_settings(row['settings'])}", highlight=False
        )
    print_results(results, out)
    console.print(results["recommendation"]["verdict"], highlight=False)
    trials = f"; trials: {target / 'leaderboard.csv'}" if search["trials"] else ""
    console.print(f"model: {target / MODEL_DIR}{trials}; report: {target / 'report.html'}")


@config_options(
    "backbone", "dataset", *STUDY_FILES, "seeds", "n_train", "n_test", "epochs", *RUN_FOLDER,
    help={
        "seeds": "runs per point [default: 3, 1 with --quick]",
        "n_train": "labelled examples [default: the study's budget]",
        "n_test": "held-out test examples [default: the study's budget]",
        "epochs": "training epochs [default: the study's budget]",
        "config": "YAML run config, under the study's budget; command-line options override both",
    },
)  # fmt: skip
def study(
    name: Annotated[
        str, typer.Argument(help="lr-sweep, epochs, discriminative-lr, layer-probe, lora-rank, learning-curve, model-size or forgetting")
    ],
    quick: Annotated[bool, typer.Option("--quick", help="one seed and a smaller budget: under 10 minutes on 2 cores")] = False,
    *,
    options: Options,
) -> None:
    """Run one of the classic transfer-learning experiments and say, with numbers, whether the expected result held."""
    from transferlab.config import load_run_config
    from transferlab.report.table import print_results
    from transferlab.studies import get_study, run_study, study_config

    chosen = get_study(name)
    base = load_run_config(options["config"]) if options["config"] is not None else None
    budgeted = {k: options[k] for k in ("backbone", "dataset", "seeds", "n_train", "n_test", "epochs")}
    files = {k: options[k] for k in STUDY_FILES}
    config = study_config(chosen, quick, **budgeted, data_files=files, base=base)
    target = out_dir(options["out_dir"], f"study-{name}")
    quiet_unless_main()
    with training_progress() as progress:
        progress(name)
        results = run_study(chosen, config, target, quick=quick, log=progress_logger(), resume=options["resume"])
    print_results(results, out)
    expectation = results["study"]["expectation"]
    out.print(f"{chosen.expected_result}: {expectation['outcome']}. {expectation['verdict']}", highlight=False, soft_wrap=True)
    console.print(f"report: {target / 'report.html'}")
