"""`transferlab train`: one strategy, exported the way Hugging Face loads it.

The exported folder holds `save_pretrained` safetensors and config, the tokenizer, and
`transferlab.json` (labels, backbone, strategy). LoRA is merged into the weights unless the adapter
is kept, in which case the folder is a peft adapter over the named backbone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peft import PeftModel

from transferlab.backbones.base import base_model
from transferlab.config import RunConfig
from transferlab.distributed import is_main_process
from transferlab.errors import UserError
from transferlab.evaluation.stats import aggregate_runs
from transferlab.recipes.experiment import (
    Experiment,
    Log,
    StrategyRun,
    open_run_folder,
    prepare,
    run_record,
    run_strategy,
    write_label_issues,
)
from transferlab.recipes.export import INT8_IMAGE_REFUSAL, export_model
from transferlab.recipes.loading import save_batch_norm_statistics
from transferlab.recipes.model_card import model_card
from transferlab.report import write_report
from transferlab.runio import EXPORT_FORMATS, MANIFEST, MODEL_DIR, atomic_write_json, atomic_write_text, staged_directory
from transferlab.strategies import Strategy


def train(
    config: RunConfig,
    out_dir: Path,
    keep_adapter: bool = False,
    log: Log = print,
    resume: bool | None = None,
    export_formats: Sequence[str] = (),
) -> tuple[StrategyRun, dict[str, Any]]:
    """`resume`: as for compare, an interrupted training continues from its last checkpoint. `export_formats`: besides
    DIR/model, the model exported as each (recipes/export.py) into DIR/<format>."""
    if len(config.strategies) != 1:
        raise UserError(f"train takes one strategy, got {', '.join(config.strategies)}")
    name = config.strategies[0]
    config.cv = config.seeds = 1  # one model to export, tested on a hold-out split
    strategy = config.strategy(name)
    if keep_adapter and not strategy.uses_peft:
        raise UserError(f"--keep-adapter applies to peft strategies (lora, ia3, prompt, prefix), not '{name}'")
    check_export_formats(export_formats, strategy, config)
    experiment = prepare(config, log)
    folder = open_run_folder(out_dir, config, resume, log, experiment, "train")
    record = run_record(experiment, "train")
    seed = config.training.seed
    run = run_strategy(experiment, name, workdir=folder.workdir(name, 0, seed), seed=seed)
    if run.model is None:
        raise UserError(f"{name} does not apply to {config.backbone}: {run.result['reason']}")
    record["strategies"][name] = aggregate_runs([run.result])
    record["model_dir"] = MODEL_DIR
    if is_main_process():  # under `accelerate launch` every process holds the same trained model
        folder.save_run(name, 0, seed, run.result, run.log_history)
        export(run, experiment, out_dir / MODEL_DIR, keep_adapter, record)
        write_label_issues(out_dir, experiment)
        folder.complete(record)
        write_report(out_dir, record)
        write_export_formats(out_dir, export_formats, log)
    log(f"{name}: test {config.training.metric} {run.result['metrics'][config.training.metric]:.4f}; model in {out_dir / MODEL_DIR}")
    return run, record


def check_export_formats(formats: Sequence[str], strategy: Strategy | None, config: RunConfig) -> None:
    """What can be known before training: the format exists, and the strategy (when known) and the inputs allow it."""
    unknown = [fmt for fmt in formats if fmt not in EXPORT_FORMATS]
    if unknown:
        raise UserError(f"unknown export format {', '.join(unknown)}: choose from {', '.join(EXPORT_FORMATS)}")
    if strategy is not None and not strategy.merges and set(formats) - {"hf"}:
        raise UserError(f"{strategy.name}'s virtual tokens cannot be merged into one classifier: export it as hf only")
    if "onnx-int8" in formats and config.modality != "text":
        raise UserError(INT8_IMAGE_REFUSAL)
    if "sentence-transformers" in formats and config.modality != "text":
        raise UserError("a sentence-transformers export holds a text model; export an image model as onnx or hf")
    refusal = strategy.sentence_transformers_refusal() if strategy is not None and "sentence-transformers" in formats else None
    if refusal:
        raise UserError(f"{refusal}: export as onnx")


def write_export_formats(out_dir: Path, formats: Sequence[str], log: Log) -> None:
    """DIR/model exported again as each format, into DIR/<format> (hf is DIR/model itself)."""
    for fmt in [fmt for fmt in dict.fromkeys(formats) if fmt != "hf"]:
        try:
            log(f"{fmt}: {export_model(out_dir / MODEL_DIR, fmt, out_dir / fmt)}")
        except UserError as err:
            raise UserError(f"the trained model is in {out_dir / MODEL_DIR}, but its {fmt} export failed: {err}") from None


def export(run: StrategyRun, experiment: Experiment, target: Path, keep_adapter: bool, record: dict[str, Any] | None = None) -> None:
    """Write into a staging folder and move it into place, so a half-written model never looks complete; with the
    run's record, a model card (README.md) goes with it."""
    with staged_directory(target) as staging:
        model = run.model if keep_adapter else run.strategy.export(run.model)
        model.save_pretrained(staging)  # a peft model that cannot merge (prompt, prefix) saves as an adapter
        if isinstance(model, PeftModel):
            save_batch_norm_statistics(model, staging)
        experiment.preprocessor.save(staging)
        config = experiment.config
        manifest = {
            "format": "peft-adapter" if isinstance(model, PeftModel) else "merged",
            "backbone": config.backbone,
            "backbone_sha256": experiment.backbone.hashes,
            "strategy": run.strategy.name,
            "label_names": experiment.label_names,
            "family": config.family.name,
            "modality": config.modality,
            "pooling": config.pooling,
            "max_length": config.max_length,
            "temperature": base_model(model).config.calibration_temperature,  # fitted on validation; 1 when calibration is off
            # binary: class 1 from this probability on; multi-label: one per label; None: argmax (multi-label: 0.5)
            "threshold": run.result.get("decision_thresholds" if experiment.data.multi_label else "decision_threshold"),
            "multi_label": experiment.data.multi_label,  # a sigmoid per label: every label whose probability reaches its threshold
            "label_separator": config.label_separator,  # how predict writes (and reads) a set of labels
        }
        atomic_write_json(staging / MANIFEST, manifest)
        adapter_config = staging / "adapter_config.json"
        if adapter_config.is_file():  # peft leaves it empty: where the backbone's files are, so peft can load it
            values = json.loads(adapter_config.read_text(encoding="utf-8"))
            atomic_write_json(adapter_config, {**values, "base_model_name_or_path": experiment.backbone.path})
        if record is not None:  # in place of peft's empty template
            atomic_write_text(staging / "README.md", model_card(record, manifest))
