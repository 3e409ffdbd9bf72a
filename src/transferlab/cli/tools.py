"""The commands around a run: recommend, predict, serve, report, lr-table and list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from transferlab.cli.common import console, out, progress_logger
from transferlab.cli.options import config_options
from transferlab.errors import UserError

EXPORT_FORMAT_HELP = (
    "onnx (onnxruntime, no torch), onnx-int8 (int8 weights, onnxruntime's dynamic quantisation), "
    "sentence-transformers (text: SentenceTransformer(DIR).encode gives the logits) or hf (the folder as train wrote it)"
)
BACKEND_HELP = "torch, or onnxruntime: run a 'transferlab export' folder with onnxruntime, without importing torch"
PREDICT_BACKEND_HELP = "auto (onnxruntime for a folder holding model.onnx, else torch), torch or onnxruntime"


@config_options("backbone", "seed", "text_column", "image_column", "label_column", "label_separator", "label_columns", "skip_bad_images")
def recommend_command(
    dataset: Annotated[str, typer.Option(help="catalog name or a .csv/.jsonl/.parquet file")],
    n_train: Annotated[int | None, typer.Option(help="labelled examples you have: a stratified subset of this size [default: all]")] = None,
    tasks: Annotated[int, typer.Option(help="tasks that will share the backbone")] = 1,
    memory_gb: Annotated[float | None, typer.Option(help="memory available for training, in GB [default: not constrained]")] = None,
    *,
    options: dict[str, Any],
) -> None:
    """Recommend a strategy and its settings from data size, a measured domain gap, tasks and memory (rules of thumb, with reasons)."""
    from transferlab.catalog import DEFAULT_BACKBONE
    from transferlab.config import label_source
    from transferlab.recipes.recommend import format_recommendation, recommend

    rec = recommend(
        options["backbone"] or DEFAULT_BACKBONE,
        dataset,
        n_train,
        tasks,
        memory_gb,
        options["seed"] or 0,
        options["text_column"] or "text",
        label_source(options["label_column"] or "label", options["label_columns"]),
        progress_logger(),
        options["image_column"] or "path",
        options["label_separator"],
        bool(options["skip_bad_images"]),
    )
    for line in format_recommendation(rec):
        out.print(line, highlight=False, soft_wrap=True)


def export(
    model: Annotated[Path, typer.Argument(help="a DIR/model folder written by 'transferlab train'")],
    out_dir: Annotated[Path, typer.Option("--out", help="the folder to write")],
    format: Annotated[str, typer.Option(help=EXPORT_FORMAT_HELP)] = "onnx",
) -> None:
    """Write the model in the format where it will run (docs/deploy.md), checked against the model first."""
    from transferlab.recipes.export import export_model

    console.print(f"{format}: {export_model(model, format, out_dir)}")


def predict(
    model: Annotated[
        Path, typer.Option(help="a DIR/model folder written by 'transferlab train' (or 'export', with --backend onnxruntime)")
    ],
    text: Annotated[list[str] | None, typer.Option(help="a text to classify; repeat for several")] = None,
    image: Annotated[list[Path] | None, typer.Option(help="an image file or a folder of images; repeat for several")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help=".csv/.jsonl/.parquet/.txt file of texts")] = None,
    text_column: Annotated[str, typer.Option(help="text column of --input")] = "text",
    label_column: Annotated[str | None, typer.Option(help="true labels in --input: also report accuracy and macro-F1")] = None,
    label_columns: Annotated[
        str | None, typer.Option(help="true labels of a multi-label model in --input as one 0/1 column per label, comma-separated")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="write predictions here (.csv or .jsonl)")] = None,
    backend: Annotated[str, typer.Option(help=PREDICT_BACKEND_HELP)] = "auto",
) -> None:
    """Print the label and class probabilities for each text or image."""
    from transferlab.config import label_source
    from transferlab.recipes.predict import predict_command

    if label_column and label_columns:
        raise UserError("give --label-column or --label-columns, not both")
    predict_command(model, text, image, input_file, text_column, output, out, label_source(label_column, label_columns), backend)


def serve(
    adapter: Annotated[
        list[str] | None, typer.Option(help="NAME=DIR: a task and its 'train --keep-adapter' output folder (DIR/model); repeat for more")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="the backbone every adapter was trained on [default: the one their transferlab.json names]")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="NAME=DIR: a task and its 'transferlab export' folder, with --backend onnxruntime; repeat for more"),
    ] = None,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "torch",
    host: Annotated[str, typer.Option(help="address to bind; the default answers this machine only")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    max_inputs: Annotated[int, typer.Option(help="texts per request")] = 64,
    max_chars: Annotated[int, typer.Option(help="characters per text")] = 2000,
    max_batch: Annotated[int, typer.Option(help="texts per forward pass, gathered from concurrent requests")] = 64,
    batch_wait_ms: Annotated[float, typer.Option(help="how long a request waits for others to share its forward pass")] = 5.0,
) -> None:
    """Answer POST /v1/predict for many tasks: adapters over one backbone held in memory once (torch), or exported
    ONNX models (onnxruntime, no torch). API docs at /docs."""
    import uvicorn

    from transferlab.serve.app import Limits, create_app
    from transferlab.serve.task_folders import parse_task_folders

    if min(max_inputs, max_chars, max_batch) < 1 or batch_wait_ms < 0:
        raise UserError("--max-inputs, --max-chars and --max-batch must be at least 1, --batch-wait-ms not negative")
    if backend == "onnxruntime":
        from transferlab.serve.onnx_tasks import OnnxTasks

        if adapter or backbone:
            raise UserError("--backend onnxruntime serves exported models: give --model NAME=DIR, not --adapter or --backbone")
        served = OnnxTasks(parse_task_folders(model or [], "--model", "a folder written by 'transferlab export'"))
    elif backend == "torch":
        from transferlab.serve.tasks import MultiTaskModel

        if model:
            raise UserError("--model serves an ONNX export: add --backend onnxruntime (torch serves --adapter folders)")
        served = MultiTaskModel(backbone, parse_task_folders(adapter or []))
    else:
        raise UserError(f"unknown backend '{backend}': choose torch or onnxruntime")
    limits = Limits(max_inputs=max_inputs, max_chars=max_chars, max_batch=max_batch, max_wait_ms=batch_wait_ms)
    console.print(f"serving {', '.join(served.tasks)} over {served.backbone} on http://{host}:{port} (API docs at /docs)")
    uvicorn.run(create_app(served, limits), host=host, port=port, log_level="warning")


def report(directory: Annotated[Path, typer.Argument(help="a run folder holding results.json")]) -> None:
    """Rebuild report.html and report.md from a run folder's results.json, without retraining."""
    from transferlab.report import rebuild_report

    console.print(f"report: {rebuild_report(directory)}")


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
