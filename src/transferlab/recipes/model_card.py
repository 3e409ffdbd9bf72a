"""The model card in every exported folder: the YAML front matter the Hugging Face Hub reads, and a readable body.

The front matter follows the Hub's model-card metadata (`base_model`, `library_name`, `pipeline_tag`, `tags`,
`datasets`, and `model-index` with the test metrics); the body says what was trained on what, how well, and how to
train it again. Its metrics are the run's own, from the record that becomes results.json.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import yaml

from transferlab.backbones import family_named
from transferlab.catalog import BACKBONES, looks_like_hub_id
from transferlab.data.catalog import DATASETS
from transferlab.runio import CONFIG

# The library that loads each exported format (a merged model: its backbone family's library).
LIBRARIES = {"peft-adapter": "peft", "onnx": "onnx", "onnx-int8": "onnx", "sentence-transformers": "sentence-transformers"}
CONTENTS = {
    "peft-adapter": "a peft adapter over the backbone",
    "onnx": "the whole classifier as an ONNX graph (fp32) that returns class probabilities; docs/deploy.md runs it with onnxruntime alone",
    "onnx-int8": "the whole classifier as an ONNX graph with int8 weights that returns class probabilities; docs/deploy.md runs it with onnxruntime alone",
    "sentence-transformers": "a sentence-transformers pipeline: `SentenceTransformer(folder).encode(texts)` returns the class logits (softmax gives the probabilities; a sigmoid per label for a multi-label model)",
}


def base_model_id(spec: str) -> str | None:
    """The backbone's Hub id: a catalog entry's, or the id the user named; None for local weights."""
    if spec in BACKBONES:
        return BACKBONES[spec].hub_id or None
    return spec if looks_like_hub_id(spec) else None


def front_matter(record: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    strategy, dataset = manifest["strategy"], record["dataset"]
    pipeline = "image-classification" if manifest["modality"] == "image" else "text-classification"
    library = LIBRARIES.get(manifest["format"]) or family_named(manifest["family"]).library_name
    runs = len(record["strategies"][strategy]["runs"])
    metrics = [
        {"type": name, "value": round(value["mean"], 4), "name": f"{name}: {value['mean']:.4f} ± {value['std']:.4f} over {runs} run(s)"}
        for name, value in record["strategies"][strategy]["metrics"].items()
    ]
    meta: dict[str, Any] = {}
    base = base_model_id(record["backbone"])
    if base:
        meta["base_model"] = base
    meta |= {"library_name": library, "pipeline_tag": pipeline, "tags": ["transferlab", strategy]}
    if dataset in DATASETS:
        meta["datasets"] = [dataset]
    meta["model-index"] = [
        {
            "name": f"{record['backbone']}-{strategy}-{Path(dataset).stem}",
            "results": [{"task": {"type": pipeline}, "dataset": {"name": dataset, "type": dataset}, "metrics": metrics}],
        }
    ]
    return meta


def _decision(manifest: dict[str, Any]) -> str:
    temperature, threshold = manifest.get("temperature", 1.0), manifest.get("threshold")
    multi = manifest.get("multi_label", False)
    raw = "raw sigmoid probabilities, one per label" if multi else "raw softmax probabilities"
    scaled = f"probabilities calibrated by temperature scaling (T = {temperature:.3f}, fitted on validation)" if temperature != 1.0 else raw
    if multi:
        cuts = ", ".join(f"{name} {cut:.2f}" for name, cut in zip(manifest["label_names"], threshold)) if threshold else None
        chosen = f"every label whose probability reaches its threshold ({cuts or 'one half each'}{'; tuned on validation' if cuts else ''})"
        return f"{scaled}; the labels are {chosen}"
    chosen = (
        f"{manifest['label_names'][1]} from P = {threshold:.2f} on (tuned on validation)"
        if threshold is not None
        else "the most probable class"
    )
    return f"{scaled}; the label is {chosen}"


def model_card(record: dict[str, Any], manifest: dict[str, Any]) -> str:
    """README.md for an exported folder."""
    strategy = manifest["strategy"]
    summary = record["strategies"][strategy]
    counts = record["class_counts"][0]["train"] if record.get("class_counts") else {}
    kind = CONTENTS.get(manifest["format"], "the backbone with the adaptation merged in")
    lines = [
        "---",
        yaml.safe_dump(front_matter(record, manifest), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {record['backbone']} adapted to {record['dataset']} with {strategy}",
        "",
        f"Trained by transferlab {importlib.metadata.version('transferlab')} on {record['n_fit']} examples ({record['n_val']} more for "
        f"validation), tested on {record['n_test']} held-out examples ({record['evaluation']['test_examples']}). "
        f"This folder holds {kind}.",
        "",
        "| metric | test |",
        "|---|---|",
        *(f"| {name} | {value['mean']:.4f} ± {value['std']:.4f} |" for name, value in summary["metrics"].items()),
        "",
        f"- Labels: {', '.join(manifest['label_names'])}" + (f" (training examples per class: {counts})" if counts else ""),
        f"- Strategy settings: {summary.get('settings', {})}",
        f"- Trainable parameters: {summary['trainable_params']:,} of {summary['total_params']:,}",
        f"- Decision: {_decision(manifest)}",
        f"- Pooling {manifest['pooling']}, inputs cut to {manifest['max_length']} tokens"
        if manifest["modality"] == "text"
        else "- Image preprocessing: preprocessor_config.json",
        "",
        f"Train it again: `transferlab train --config {CONFIG} --out DIR`, with the run folder's {CONFIG} (the resolved "
        "configuration, seed included); the same seed on the same machine gives the same numbers.",
        "",
    ]
    return "\n".join(lines)
