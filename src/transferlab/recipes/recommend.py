"""`transferlab recommend`: measure the domain gap, then apply the decision framework (decision.py).

Read top to bottom: load the data (a stratified subset of --n-train examples), load the backbone,
measure the label-free gap score on the data (evaluation/domain_gap.py), put data size, gap, tasks
and memory through `decision.decide`, and spell out the strategy's settings from its own defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transferlab.backbones import build_classifier, family_for, load_preprocessor, resolve_backbone
from transferlab.config import strategy_for
from transferlab.data.catalog import load_dataset
from transferlab.data.splits import stratified_subset
from transferlab.decision import ADAM_BYTES_PER_PARAM, Situation, decide
from transferlab.errors import UserError
from transferlab.evaluation.domain_gap import LARGE_FROM, SMALL_BELOW, measure_gap

Log = Callable[[str], None]


def recommend(
    backbone: str,
    dataset: str,
    n_train: int | None = None,
    tasks: int = 1,
    memory_gb: float | None = None,
    seed: int = 0,
    text_column: str = "text",
    label_column: str | list[str] = "label",
    log: Log = print,
    image_column: str = "path",
    label_separator: str | None = None,
    skip_bad_images: bool = False,
    labelled: int | None = None,
) -> dict[str, Any]:
    """The recommendation as a plain dict (printed by the CLI, stored in compare's results.json). `labelled`: the
    examples a run's models learn from, where they are not `dataset`'s own count (a run holds test examples out, or
    adds a validation file); the domain gap is then measured on up to that many of `dataset`."""
    if tasks < 1 or (n_train is not None and n_train < 2) or (memory_gb is not None and memory_gb <= 0):
        raise UserError("recommend needs --tasks >= 1, --n-train >= 2 and --memory-gb > 0")
    family = family_for(backbone)
    data = load_dataset(dataset, text_column, label_column, family.inputs, image_column, skip_bad_images, label_separator)
    if n_train is not None:
        if n_train > len(data):
            raise UserError(f"--n-train {n_train} is more than the {len(data)} examples of {dataset}")
        data = stratified_subset(data, n_train, seed)
    size = len(data) if labelled is None else labelled
    if size < len(data):
        data = stratified_subset(data, size, seed)
    asset = resolve_backbone(backbone)
    model = build_classifier(asset, data.label_names)
    preprocessor = load_preprocessor(asset)
    gap = measure_gap(model, preprocessor, data.inputs, seed)
    log(f"domain gap of {dataset} for {backbone}: {gap.describe()}")
    params = sum(p.numel() for p in model.parameters())
    note = f" (score {gap.score:.2f} from {gap.signal}; small < {SMALL_BELOW}, large >= {LARGE_FROM})"
    full_gb = ADAM_BYTES_PER_PARAM * params / 1e9
    situation = Situation(size, gap.bucket, tasks, memory_gb, full_gb, family.inputs, note, classes=len(data.label_names))
    decision = decide(situation)
    strategy = strategy_for(decision.strategy, family)
    return {
        "strategy": decision.strategy,
        "settings": _settings(decision.strategy, strategy, model, decision.epochs),
        "reasons": decision.reasons,
        "n_train": size,
        "domain_gap": {"score": gap.score, "bucket": gap.bucket, "signal": gap.signal, **gap.details},
    }


def recommend_for_run(config: Any, labelled: int, log: Log = print) -> dict[str, Any]:
    """The recommendation for a run's backbone and dataset, at the `labelled` examples each of its models learns from
    (training and validation, after the test examples are held out)."""
    rec = recommend(
        config.backbone,
        config.dataset,
        seed=config.training.seed,
        text_column=config.text_column,
        label_column=config.labels,
        log=log,
        image_column=config.image_column,
        label_separator=config.label_separator,
        skip_bad_images=config.skip_bad_images,
        labelled=labelled,
    )
    log(f"recommended: {rec['strategy']} ({rec['reasons'][-1]})")
    if rec["strategy"] not in config.strategies:
        log(f"the recommended strategy {rec['strategy']} is not among the compared ones ({', '.join(config.strategies)})")
    return rec


def verdict(strategy: str, comparison: dict[str, Any], strategies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Was the recommended strategy the best, within noise of it (compare's paired t-test), or worse? `strategies`:
    each compared strategy's summary, to tell a recommendation that failed from one that was not compared."""
    best = comparison["best"]
    if strategy == best:
        return {"best": best, "within_noise": True, "verdict": f"recommended {strategy} was the best strategy"}
    other = comparison["others"].get(strategy)
    if other is None:
        summary = strategies.get(strategy)
        what = "was not compared" if summary is None else f"{summary['status']}: {summary.get('reason', 'no score')}"
        against = f"best: {best}" if best is not None else "no strategy finished"
        return {"best": best, "within_noise": None, "verdict": f"recommended {strategy} {what} ({against})"}
    within = other["within_noise"]
    how = (
        "within noise of"
        if within
        else "untested against (one run each: use --cv or --seeds)"
        if within is None
        else "significantly worse than"
    )
    gap = f"{other['gap']:.4f} below, p = {other['p_value']:.3g}" if other["p_value"] is not None else f"{other['gap']:.4f} below"
    return {"best": best, "within_noise": within, "verdict": f"recommended {strategy} was {how} the best, {best} ({gap})"}


def _settings(name: str, strategy: Any, model: Any, epochs: int | None) -> dict[str, Any]:
    """Learning rate, epochs, which layers train, LoRA rank: from the strategy's own (measured) defaults."""
    groups = [g.name for g in model.layer_groups()]
    if name == "head":
        return {"trains": "the new head only: logistic regression on frozen, cached features (C by cross-validation)"}
    if name == "setfit":
        grid = strategy.config.head_c_grid
        strength = f"C = {grid[0]:g}" if len(grid) == 1 else "C by cross-validation"
        strength += ", balanced class weights" if strategy.config.balanced_head else ""
        return {
            "lr": strategy.config.lr,
            "pair_iterations": strategy.config.pair_iterations,
            "trains": f"all {len(groups)} layer groups on pairs of examples (cosine similarity), then a logistic head "
            f"({strength}) on the tuned features scaled to unit length",
        }
    settings: dict[str, Any] = {"lr": strategy.config.lr, "epochs": epochs}
    if name == "full":
        settings["trains"] = f"all {len(groups)} layer groups ({groups[0]} to {groups[-1]})"
    elif name == "partial":
        frozen = strategy.frozen_groups(model)
        settings["freeze_below"] = frozen
        settings["trains"] = f"{', '.join(groups[frozen:])}; frozen: {', '.join(groups[:frozen])}"
    else:
        targets = strategy.config.target_modules or model.default_lora_targets()
        settings["r"] = strategy.config.r
        settings["trains"] = (
            f"rank-{strategy.config.r} LoRA on {len(targets)} module(s) ({', '.join(targets[:4])}{', ...' if len(targets) > 4 else ''}) and the head"
        )
    return settings


def format_recommendation(rec: dict[str, Any]) -> list[str]:
    """Lines for the terminal: the strategy, its settings, the reasons."""
    lines = [f"recommended strategy: {rec['strategy']}"]
    lines += [f"  {key}: {value}" for key, value in rec["settings"].items()]
    return lines + ["because:"] + [f"  - {reason}" for reason in rec["reasons"]]
