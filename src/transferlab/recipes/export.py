"""`transferlab export`: a trained model in the format where it will run.

- hf: the folder as `train` wrote it (transferlab's own predict, serve and further training);
- onnx, onnx-int8: one graph for onnxruntime, pooling and head included (recipes/onnx_export.py);
- sentence-transformers (text): a folder that `SentenceTransformer(DIR)` loads without transferlab: the backbone
  (Transformer), its pooling (Pooling) and the classifier as a Dense layer with no activation, so `encode` returns
  the logits and the embeddings and the classifier travel together.

Every export is written to a staging folder, checked against the model it came from, and only then moved into
place. It carries transferlab.json (its format added) and a model card that says how to run that format.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.errors import UserError
from transferlab.recipes.loading import LoadedModel, load_model
from transferlab.recipes.model_card import model_card
from transferlab.runio import CONFIG, EXPORT_FORMATS, MANIFEST, MODEL_DIR, RESULTS, atomic_write_json, atomic_write_text, staged_directory
from transferlab.strategies.adapters import ADAPTERS_IN_LAYERS
from transferlab.strategies.head import unpoolable_layers

# Dynamic quantisation scales each batch's activations without calibration: for a CNN's convolutions that is too coarse
# (a mobilenet-v2 head on fashion-mnist: test accuracy 0.800 in fp32, 0.713 in int8, one label in five changed).
INT8_IMAGE_REFUSAL = (
    "onnx-int8 scales activations without calibration, which cost a CNN 9 points of accuracy; export an image model as onnx"
)
# What a sentence-transformers export's logits must reproduce of the model's, checked before it is published.
LOGIT_TOLERANCE = 1e-4
# sentence-transformers' names for our poolings.
ST_POOLING = {"mean": "mean", "cls": "cls", "last": "lasttoken"}


def export_model(model_dir: Path, fmt: str, out: Path) -> Path:
    """`model_dir` (a `train` folder) written as `fmt` at `out`; returns `out`."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format '{fmt}': choose one of {', '.join(EXPORT_FORMATS)}")
    model_dir, out = Path(model_dir), Path(out)
    _check_replaceable(out, model_dir)
    loaded = load_model(model_dir)
    if fmt == "onnx-int8" and loaded.modality == "image":
        raise UserError(INT8_IMAGE_REFUSAL)
    with staged_directory(out) as staging:
        if fmt == "hf":
            shutil.copytree(model_dir, staging, dirs_exist_ok=True)
            return out
        if fmt.startswith("onnx"):
            from transferlab.recipes.onnx_export import write_onnx

            added = write_onnx(loaded, fmt, staging)
            for path in model_dir.iterdir():  # the tokenizer or image settings travel with the graph
                if path.is_file() and path.suffix != ".safetensors" and path.name not in ("adapter_config.json", MANIFEST, "README.md"):
                    shutil.copy2(path, staging / path.name)
        else:
            added = write_sentence_transformers(loaded, staging)
        manifest = loaded.manifest | {"format": fmt, **added}
        atomic_write_json(staging / MANIFEST, manifest)
        record_path = model_dir.parent / RESULTS
        if record_path.is_file():  # the card says how to run this format
            atomic_write_text(staging / "README.md", model_card(json.loads(record_path.read_text(encoding="utf-8")), manifest))
        elif (model_dir / "README.md").is_file():
            shutil.copy2(model_dir / "README.md", staging / "README.md")
    return out


def _check_replaceable(out: Path, model_dir: Path) -> None:
    """An export replaces `out` whole, so `out` must be new, empty, or an earlier model folder (it holds a manifest),
    and must not hold the model being exported: a run folder or any other folder named by mistake is never deleted."""
    if model_dir.resolve().is_relative_to(out.resolve()):
        raise UserError(f"--out {out}: it holds the model being exported; give a folder outside it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise UserError(f"--out {out}: exists and holds no exported model, and an export replaces it whole; give a new or empty folder")
    if out.name == MODEL_DIR and (out.parent / CONFIG).is_file():
        raise UserError(f"--out {out}: the model of the run in {out.parent}, and an export replaces it whole; give another folder")


def write_sentence_transformers(loaded: LoadedModel, folder: Path) -> dict[str, Any]:
    """Transformer -> Pooling (-> Normalize, for features scaled to unit length) -> Dense(logits), saved by
    sentence-transformers itself, then checked against the model."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    if loaded.modality != "text":
        raise UserError("a sentence-transformers export holds a text model; export an image model as onnx or hf")
    model = copy.deepcopy(loaded.merged("sentence-transformers"))
    config = model.config
    if config.adapters:
        raise UserError(f"{ADAPTERS_IN_LAYERS}: export as onnx")
    if config.feature_layers == "second_to_last":  # the same features from a body one layer shorter
        del model.layer_stack()[-1]
        model.backbone.config.num_hidden_layers -= 1
    elif config.feature_layers != "last":
        raise UserError(f"{unpoolable_layers(config.feature_layers)}: export as onnx")
    with tempfile.TemporaryDirectory() as body:
        model.backbone.save_pretrained(body)
        loaded.preprocessor.tokenizer.save_pretrained(body)
        transformer = Transformer(body, max_seq_length=loaded.manifest["max_length"])
    hidden = config.backbone_config.hidden_size
    head, temperature = model.classifier, config.calibration_temperature  # the calibrated logits: the head's, divided by T
    dense = Dense(
        hidden,
        head.out_features,
        activation_function=torch.nn.Identity(),
        init_weight=head.weight / temperature,
        init_bias=head.bias / temperature,
    )
    pooling = [Pooling(hidden, pooling_mode=ST_POOLING[model.pooling()]), *([Normalize()] if config.unit_length else [])]
    st = SentenceTransformer(modules=[transformer, *pooling, dense], device="cpu")
    _check_logits(st, loaded)
    st.save(str(folder), create_model_card=False)
    return {"pooling": model.pooling()}


def _check_logits(st: Any, loaded: LoadedModel) -> None:
    texts = loaded.sample_inputs()
    got = st.encode(texts, convert_to_numpy=True, batch_size=len(texts))
    with torch.no_grad():
        expected = loaded.merged("sentence-transformers")(**loaded.sample_batch()).logits.numpy()
    if got.shape != expected.shape or not np.allclose(got, expected, atol=LOGIT_TOLERANCE, rtol=0):
        raise UserError("this model's features cannot be expressed as a sentence-transformers pipeline (its logits differ): export as onnx")
