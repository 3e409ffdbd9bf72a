"""`transferlab export`: a trained model as ONNX that runs with onnxruntime alone, no torch and no transferlab.

The graph takes what the preprocessing makes (token ids, attention mask and token types; or normalised pixels)
and returns class probabilities, pooling and head included, with dynamic batch (and sequence) axes. It is written
by torch's TorchScript-based exporter, checked by onnx's checker, and compared with the model it came from before
the folder is published. `onnx-int8` quantises the weights of its matrix products to int8 with onnxruntime's
dynamic quantisation, one scale per output channel (activations are quantised per batch at run time). The tokenizer (or the image
preprocessing settings), transferlab.json and the model card travel with it; docs/deploy.md classifies texts with
it using onnxruntime, tokenizers and numpy only.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from torch import nn

from transferlab.errors import UserError
from transferlab.recipes.loading import load_model
from transferlab.runio import MANIFEST, atomic_write_json, publish_directory

FORMATS = ("onnx", "onnx-int8")
ONNX_FILE = "model.onnx"
OPSET = 17
# What the exported graph must reproduce of the model it came from (fp32), checked on the export's sample batch.
EXPORT_TOLERANCE = 1e-4


class _Probabilities(nn.Module):
    """The classifier as `predict` runs it: named inputs in, softmax probabilities out."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(**dict(zip(self.names, inputs))).logits.float(), -1)


def _sample_batch(loaded, image: bool) -> dict[str, torch.Tensor]:
    """Two inputs of different lengths (or sizes), preprocessed as predict does."""
    if image:
        rng = np.random.default_rng(0)
        inputs = [rng.integers(0, 256, (96, 80, 3), dtype=np.uint8) for _ in range(2)]
    else:
        inputs = ["a short text", "a longer text, with a few more words in it than the first one has"]
    return {k: v for k, v in loaded.preprocessor.collate(loaded.preprocessor.encode(inputs)).items() if k != "labels"}


def export_onnx(model_dir: Path, fmt: str, out: Path) -> Path:
    """`model_dir` (a `train` export) as an ONNX folder at `out`; written to a staging folder, then moved into place."""
    import onnx

    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}': choose one of {', '.join(FORMATS)}")
    loaded = load_model(Path(model_dir))
    model = loaded.model
    if isinstance(model, PeftModel):  # a kept adapter: merged, unless it is virtual tokens
        if model.active_peft_config.is_prompt_learning:
            raise UserError(f"{model_dir}: prompt and prefix tuning's virtual tokens cannot be merged into an ONNX classifier")
        model = model.merge_and_unload()
    model = model.cpu().eval().requires_grad_(False)
    image = loaded.modality == "image"
    batch = _sample_batch(loaded, image)
    names = tuple(batch)
    axes = {name: {0: "batch"} if image else {0: "batch", 1: "sequence"} for name in names} | {"probabilities": {0: "batch"}}
    wrapped = _Probabilities(model, names).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        graph = staging / ONNX_FILE
        torch.onnx.export(
            wrapped, tuple(batch.values()), str(graph), input_names=list(names), output_names=["probabilities"],
            dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        )  # fmt: skip
        onnx.checker.check_model(str(graph))
        _check_against(wrapped, graph, batch)
        if fmt == "onnx-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per-channel scales: per-tensor ones flipped 12% of a minilm head's rt-polarity labels, per-channel 4%
            # (docs/benchmarks.md, "ONNX export").
            quantize_dynamic(str(graph), str(staging / "int8.onnx"), weight_type=QuantType.QInt8, per_channel=True)
            (staging / "int8.onnx").replace(graph)
        for path in Path(model_dir).iterdir():  # the tokenizer or image settings, the manifest and the model card
            if path.is_file() and path.suffix != ".safetensors" and path.name not in ("adapter_config.json", MANIFEST):
                shutil.copy2(path, staging / path.name)
        manifest = loaded.manifest | {"format": fmt, "onnx_inputs": list(names), "onnx_output": "probabilities"}
        atomic_write_json(staging / MANIFEST, manifest)
        publish_directory(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / ONNX_FILE


def _check_against(wrapped: nn.Module, graph: Path, batch: dict[str, torch.Tensor]) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: value.numpy() for name, value in batch.items()})[0]
    with torch.no_grad():
        expected = wrapped(*batch.values()).numpy()
    if not np.allclose(got, expected, atol=EXPORT_TOLERANCE, rtol=0):
        raise UserError(f"the ONNX graph does not reproduce the model (largest difference {np.abs(got - expected).max():.2g})")
