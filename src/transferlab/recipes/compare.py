"""`transferlab compare`: every chosen strategy on the same splits, one table.

Read top to bottom: load the data, make the splits (one hold-out split, or K stratified folds),
tokenise once, then for each strategy, fold and seed build a fresh classifier from the pretrained
backbone, fit it, evaluate it on that split's test examples, and record metrics, trainable
parameters, time and peak memory. Each metric is then reported as mean ± std over the runs, the
best strategy is marked, and a paired t-test over the same folds and seeds (corrected for the folds'
overlapping training sets) says which of the others are within noise of it. Results are written atomically at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferlab.config import RunConfig
from transferlab.distributed import broadcast, is_main_process
from transferlab.evaluation.stats import aggregate_runs, compare_to_best, fold_overlap, one_test_set
from transferlab.recipes.experiment import Job, Log, open_run_folder, prepare, run_record, summarize_runs, write_label_issues

if TYPE_CHECKING:
    from transferlab.recipes.executors import RayExecutor, Sequential


def compare(
    config: RunConfig,
    out_dir: Path,
    log: Log = print,
    executor: Sequential | RayExecutor | None = None,
    recommend: bool = False,
    resume: bool | None = None,
) -> dict[str, Any]:
    """`executor` runs the strategy x fold x seed jobs (recipes/executors.py); by default one after another here.
    `recommend`: the decision framework's recommendation first (recipes/recommend.py), checked against the comparison at the end.
    `resume`: see `RunFolder.open`; by default an unfinished run of this config in `out_dir` is carried on."""
    from transferlab.recipes.executors import Sequential
    from transferlab.recipes.recommend import recommend_for_run, verdict
    from transferlab.report import write_report

    experiment = prepare(config, log)
    labelled = len(experiment.split.train) + len(experiment.split.val)
    recommendation = recommend_for_run(config, labelled, log) if recommend else None
    folder = open_run_folder(out_dir, config, resume, log, experiment, "compare")
    record = run_record(experiment, "compare")
    metric = config.training.metric
    jobs = [Job(name, fold, seed) for name in config.strategies for fold in range(len(experiment.splits)) for seed in experiment.seeds()]
    # Rank 0 reads what finished before; every process must skip the same jobs.
    results = broadcast({job: folder.finished_result(*job.key) for job in jobs} if is_main_process() else None)
    done = sum(r is not None for r in results.values())
    if done:
        log(f"resuming {out_dir}: {done} of {len(jobs)} runs finished before")
    pending = [job for job in jobs if results[job] is None]
    for job, outcome in zip(pending, (executor or Sequential()).map(experiment, pending, out_dir)):
        if is_main_process():
            folder.save_run(*job.key, outcome.result, outcome.log_history)
        results[job] = outcome.result
        runs = [results[j] for j in jobs if j.strategy == job.strategy]
        if all(runs):
            _log_summary(job.strategy, aggregate_runs(runs), metric, log)
    for name in config.strategies:
        record["strategies"][name] = summarize_runs([results[j] for j in jobs if j.strategy == name])
    record["comparison"] = compare_to_best(record["strategies"], metric, one_test_set(record), fold_overlap(record))
    if recommendation:
        record["recommendation"] = {**recommendation, **verdict(recommendation["strategy"], record["comparison"], record["strategies"])}
    if is_main_process():
        write_label_issues(out_dir, experiment)
        folder.complete(record)
        write_report(out_dir, record)
    return record


def _log_summary(name: str, summary: dict[str, Any], metric: str, log: Log) -> None:
    if summary["status"] != "ok":
        log(f"{name}: {summary['status']}: {summary['reason']}")
        return
    m = summary["metrics"][metric]
    log(f"{name}: test {metric} {m['mean']:.4f} ± {m['std']:.4f} over {len(m['values'])} run(s), {summary['train_seconds']:.1f}s each")
