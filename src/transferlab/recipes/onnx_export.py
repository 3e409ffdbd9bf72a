"""A trained model as ONNX that runs with onnxruntime alone, no torch and no transferlab (`export --format onnx`).

The graph takes what the preprocessing makes (token ids, attention mask and token types; or normalised pixels)
and returns class probabilities, pooling and head included, with dynamic batch (and sequence) axes. It is written
by torch's TorchScript-based exporter, checked by onnx's checker, and compared with the model it came from before
the folder is published. `onnx-int8` quantises the weights of its matrix products to int8 with onnxruntime's
dynamic quantisation, one scale per output channel (activations are quantised per batch at run time). The tokenizer (or the image
preprocessing settings), transferlab.json and the model card travel with it (recipes/export.py); docs/deploy.md
classifies texts with it using onnxruntime, tokenizers and numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.backbones.base import output_probabilities
from transferlab.deploy import ONNX_FILE
from transferlab.errors import UserError
from transferlab.recipes.loading import LoadedModel

OPSET = 17
# What the exported graph must reproduce of the model it came from (fp32), checked on the export's sample batch.
EXPORT_TOLERANCE = 1e-4


class _Probabilities(nn.Module):
    """The classifier as `predict` runs it: named inputs in, probabilities out (softmax, or a sigmoid per label)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return output_probabilities(self.model, self.model(**dict(zip(self.names, inputs))).logits)


def write_onnx(loaded: LoadedModel, fmt: str, folder: Path) -> dict[str, Any]:
    """The model as `folder`/model.onnx, checked against it; returns what the manifest adds (the graph's inputs)."""
    import onnx

    model = loaded.merged("ONNX")
    image = loaded.modality == "image"
    batch = loaded.sample_batch()
    names = tuple(batch)
    axes = {name: {0: "batch"} if image else {0: "batch", 1: "sequence"} for name in names} | {"probabilities": {0: "batch"}}
    wrapped = _Probabilities(model, names).eval()
    graph = folder / ONNX_FILE
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
        quantize_dynamic(str(graph), str(folder / "int8.onnx"), weight_type=QuantType.QInt8, per_channel=True)
        _check_int8(folder / "int8.onnx", batch)
        (folder / "int8.onnx").replace(graph)
    return {"onnx_inputs": list(names), "onnx_output": "probabilities"}


def _run_graph(graph: Path, batch: dict[str, torch.Tensor]) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return session.run(None, {name: value.numpy() for name, value in batch.items()})[0]


def _check_int8(graph: Path, batch: dict[str, torch.Tensor]) -> None:
    """The quantised graph loads and gives probabilities: its integer operators need kernels that not every
    onnxruntime build has, and the published folder must run where it was made. How far int8 moves the probabilities
    depends on the data, so it is measured on real examples (docs/benchmarks.md), not here."""
    import onnxruntime

    try:
        got = _run_graph(graph, batch)
    except Exception as err:  # onnxruntime's own error types (NotImplemented, Fail, InvalidGraph)
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"onnxruntime {onnxruntime.__version__} cannot run the int8 graph ({message}): export as onnx instead") from None
    if not np.isfinite(got).all():
        raise UserError("the int8 graph gives non-finite probabilities: export as onnx instead")


def _check_against(wrapped: nn.Module, graph: Path, batch: dict[str, torch.Tensor]) -> None:
    got = _run_graph(graph, batch)
    with torch.no_grad():
        expected = wrapped(*batch.values()).numpy()
    if not np.allclose(got, expected, atol=EXPORT_TOLERANCE, rtol=0):
        raise UserError(f"the ONNX graph does not reproduce the model (largest difference {np.abs(got - expected).max():.2g})")
