"""BatchNorm running statistics recomputed from a pass over examples, in fp32 (AdaBN, Li et al. 2016).

Two users. The frozen-layer cache re-estimates its frozen groups' statistics on the training images before it
computes them once. Mixed-precision training recomputes the statistics of the layers it trains before each
evaluation: the running averages a network gathers under bf16 autocast are off (a pointwise convolution's output
rounded to bf16 loses a depthwise channel's small spread), so a CNN that fits its batches scored near chance in eval
mode (mobilenet-v2 LoRA on fashion-mnist: 0.43 with its running statistics, 0.81 with each batch's own;
docs/findings.md).

Written by hand beside torch's `update_bn`, which resets every BatchNorm of the module it is given and runs all of it
in training mode: here only the chosen layers count, one the pass never runs keeps its statistics (a frozen-layer cache
serves some groups without running them), and everything else runs in eval mode, so dropout and drop-path draw nothing and the statistics are those of the inputs evaluation sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.training.inference import batches_by_length, model_inputs

# 512 images give each channel's mean and variance over millions of positions, at a fraction of a full pass's cost.
BATCH_NORM_EXAMPLES = 512
# Before each evaluation of mixed-precision training, fewer: 512 at each of its evaluations took about 100 s of a 230 s
# mobilenet-v2 LoRA run (fashion-mnist, 1,000 images at 224 px); 128 still give each channel 6,000 positions or more.
EVALUATION_BATCH_NORM_EXAMPLES = 128


def batch_norm_sample(examples: Sequence[dict[str, Any]], seed: int, size: int = BATCH_NORM_EXAMPLES) -> list[dict[str, Any]]:
    """A seeded random draw of up to `size` of `examples`, in their order: what a recomputation reads."""
    chosen = np.random.default_rng(seed).permutation(len(examples))[:size]
    return [examples[i] for i in sorted(chosen)]


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of `model` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def _plain_forward(model: nn.Module) -> Iterator[None]:
    """Inside, the model's forward without the autocast accelerate wraps around it for mixed-precision training (it
    keeps the plain one as `_original_forward`), so the pass computes in fp32 while training goes on around it."""
    wrapped, plain = model.__dict__.get("forward"), model.__dict__.get("_original_forward")
    if plain is not None:
        model.forward = plain
    try:
        yield
    finally:
        if plain is not None:
            model.forward = wrapped


def recompute_batch_norm(
    model: nn.Module,
    layers: Sequence[nn.Module],
    features: Sequence[dict[str, Any]],
    collate: Callable,
    batch_size: int,
    run: Callable[[dict[str, torch.Tensor]], Any] | None = None,
) -> None:
    """Set the running mean and variance of `layers` (BatchNorm modules of `model`) to their average over the batches
    of `features`, computed in fp32 (a layer the pass never runs keeps its own); `run(batch)` runs the model (default: its forward). Every
    module's mode and every layer's momentum are as they were afterwards."""
    if not layers:
        return
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    before = {m: {name: b.clone() for name, b in m.named_buffers()} for m in layers}
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the pass's batches
    chosen = set(layers)
    for module in model.modules():  # set directly: a module may pin its mode by overriding train()
        module.training = module in chosen
    device = next(model.parameters()).device
    run = run or (lambda batch: model(**batch))
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False), _plain_forward(model):
            for idx in batches_by_length(features, lambda f: 1, batch_size):
                run(model_inputs([features[i] for i in idx], collate, device))
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
            if not layer.num_batches_tracked:  # the pass never ran it: its statistics stay
                for name, buffer in before[layer].items():
                    getattr(layer, name).copy_(buffer)
        for module, training in modes.items():
            module.training = training
