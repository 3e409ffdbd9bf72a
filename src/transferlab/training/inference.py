"""Where models run and batched inference: device, precision, and length-grouped batches in input order.

Shared by training (evaluation inside the Trainer), feature extraction, the probes and prediction.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from transferlab.backbones.base import output_probabilities

if TYPE_CHECKING:
    from transferlab.backbones.registry import BackboneFamily
    from transferlab.settings import TrainingConfig


def default_device() -> torch.device:
    """The GPU when there is one; the Trainer makes the same choice for training."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


ONEDNN_CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def forgo_onednn_primitive_cache() -> None:
    """For a process that runs models forward only: oneDNN, which computes bf16 matmuls on the CPU, keeps a primitive
    per input shape, and with length-grouped batches most batches are a new shape. Those long-lived primitives land
    among each batch's freed activations and keep glibc from reusing that memory, so the peak grew with every example
    (a head on 8,000 imdb reviews: 4.3 GB with the cache, 2.2 GB without, in the same time; a forward pass over short
    sentences takes about 10% longer; docs/benchmarks.md). Training reuses its shapes and runs 1.2-1.3x slower
    without the cache, so a process that trains keeps it.

    oneDNN reads the setting when it creates its first primitive, so this must run before any model does; a value
    the user set stands."""
    os.environ.setdefault(ONEDNN_CACHE_VARIABLE, "0")


def cpu_has_bf16() -> bool:
    """A CPU with native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 matmuls run several times faster
    (2.5x fp32's rate measured on the project's 2-core EPYC, docs/benchmarks.md)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def precision_flags(choice: str) -> dict[str, bool]:
    """The Trainer's flags for what training steps compute in (its master weights stay fp32).

    auto: bf16 wherever the hardware computes it natively (a GPU that has it, a CPU with AVX512-BF16 or AMX),
    else fp32 (a family can decline bf16 on the CPU: `precision_for`). On text, head, LoRA and full fine-tuning
    trained under bf16 autocast scored within noise of fp32 in about 0.75x the time (docs/findings.md, "bf16
    against fp32"). bf16 on a CPU without it would be emulated, slower than fp32, so it trains in fp32 there;
    fp16 only on a GPU.
    """
    if choice == "fp32":
        return {}
    if not torch.cuda.is_available():
        return {"bf16": True, "use_cpu": True} if choice in ("auto", "bf16") and cpu_has_bf16() else {}
    if choice == "fp16":
        return {"fp16": True}
    if choice == "bf16" or (choice == "auto" and torch.cuda.is_bf16_supported()):
        return {"bf16": True}
    return {"fp16": True}


def precision_for(choice: str, family: BackboneFamily) -> str:
    """The precision a run of this backbone family asks for: `auto` becomes fp32 on a CPU computing bf16 natively
    where the family declines bf16 there (`BackboneFamily.cpu_bf16_declined` says why)."""
    if choice == "auto" and family.cpu_bf16_declined and not torch.cuda.is_available() and cpu_has_bf16():
        return "fp32"
    return choice


def precision_in_use(choice: str) -> str:
    """What training steps compute in on this machine for a `--precision` choice: fp32, bf16 or fp16."""
    flags = precision_flags(choice)
    return "bf16" if flags.get("bf16") else "fp16" if flags.get("fp16") else "fp32"


def training_precision(cfg: TrainingConfig) -> contextlib.AbstractContextManager:
    """The autocast training steps run under, for the passes whose output is trained on (the frozen features a
    head is fitted to). What is evaluated or exported runs outside it, in fp32, so the exported model reproduces
    the reported metrics exactly."""
    precision = precision_in_use(cfg.precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(default_device().type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def batches_by_length(features: Sequence[dict[str, Any]], length_of: Callable[[dict[str, Any]], int], batch_size: int):
    """Index batches of similar-sized examples, so padding is small; callers restore the order."""
    order = np.argsort([length_of(f) for f in features], kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


Batch = dict[str, torch.Tensor]


def model_inputs(features: Sequence[dict[str, Any]], collate: Callable[[list[dict[str, Any]]], Batch], device: torch.device) -> Batch:
    """One batch of `features` as the model's forward takes it: collated, without labels, on `device`."""
    batch = collate([{k: v for k, v in f.items() if k != "labels"} for f in features])
    return {k: v.to(device) for k, v in batch.items()}


@torch.inference_mode()
def map_batches(
    model: nn.Module,
    features: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], Batch],
    compute: Callable[[nn.Module, Batch], torch.Tensor],
    length_of: Callable[[dict[str, Any]], int] = lambda f: 1,
    batch_size: int = 64,
) -> np.ndarray:
    """`compute(model, batch)` over length-grouped batches in eval mode; rows come back in input order."""
    model.eval()
    device = next(model.parameters()).device
    out: np.ndarray | None = None
    for idx in batches_by_length(features, length_of, batch_size):
        rows = compute(model, model_inputs([features[i] for i in idx], collate, device)).float().cpu().numpy()
        if out is None:
            out = np.empty((len(features), *rows.shape[1:]), dtype=np.float32)
        out[idx] = rows
    assert out is not None, "no examples"
    return out


def predict_proba(
    model: nn.Module, features: Sequence[dict[str, Any]], collate: Callable, length_of: Callable = lambda f: 1, batch_size: int = 64
) -> np.ndarray:
    """Class probabilities (a multi-label classifier's: per label) in input order."""
    return map_batches(model, features, collate, lambda m, b: output_probabilities(m, m(**b).logits), length_of, batch_size)


def predict_logits(
    model: nn.Module, features: Sequence[dict[str, Any]], collate: Callable, length_of: Callable = lambda f: 1, batch_size: int = 64
) -> np.ndarray:
    """Logits in input order (what temperature scaling is fitted on)."""
    return map_batches(model, features, collate, lambda m, b: m(**b).logits.float(), length_of, batch_size)


def pooled_features(
    model: nn.Module, features: Sequence[dict[str, Any]], collate: Callable, length_of: Callable = lambda f: 1, batch_size: int = 64
) -> np.ndarray:
    """What the head sees (`forward_features`), in input order."""
    return map_batches(model, features, collate, lambda m, b: m.forward_features(**b), length_of, batch_size)
