"""The frozen bottom of a network, computed once per example instead of at every step.

In partial fine-tuning nothing below the lowest trainable layer group learns. Run in eval mode (no dropout,
BatchNorm on its stored statistics), those groups give an example the same output at every step and every
evaluation, so one pass computes it for the training and validation examples; during training the frozen
modules are replaced by a lookup of their cached output, and the trainable groups above start from it. Written by
hand: neither transformers, peft nor timm caches a frozen prefix.

Gradual unfreezing moves the boundary down a group per stage, but the groups below a boundary are still the
pretrained ones when that stage starts, so the same single pass keeps the output at every depth a stage will
need; `serving(depth)` switches between them.

Examples are keyed by a digest of their input (a text's real tokens; an image's pixels, so each version a
finite augmentation such as a flip makes is cached apart). Exact up to float rounding: with the attention mask, a
token's state does not depend on how much padding its batch has, and padded positions (zeros here) are kept out
of every real token and of the pooling by the same mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import xxhash
from torch import nn

from transferlab.backbones.base import TransferModel
from transferlab.training.batch_norm import batch_norm_layers, recompute_batch_norm
from transferlab.training.inference import map_batches, model_inputs


class _Captured(Exception):
    """Stops a pass once the frozen groups have run: the layers above are not needed."""


def _stop(*_: Any) -> None:
    raise _Captured


def _row_keys(inputs: torch.Tensor, attention_mask: torch.Tensor | None) -> list[bytes]:
    """128-bit xxHash3 digests: an image's 600 KB of pixels hash in 0.02 ms (blake2b: 1 ms, a fifth of a training step
    on the cache)."""
    rows = inputs if attention_mask is None else (ids[mask.bool()] for ids, mask in zip(inputs, attention_mask))
    return [xxhash.xxh3_128_digest(row.cpu().numpy().tobytes()) for row in rows]


class FrozenLayerCache:
    """The output of a model's bottom `frozen_groups` layer groups, by example; given several depths, the output at
    each of them, from one pass."""

    def __init__(self, model: TransferModel, frozen_groups: int | Sequence[int]):
        depths = sorted({frozen_groups} if isinstance(frozen_groups, int) else set(frozen_groups))
        if not depths or not all(model.prefix_units(depth) for depth in depths) or depths[-1] >= len(model.layer_groups()):
            raise ValueError(f"{frozen_groups} frozen layer groups cannot be cut off this model")
        self.model, self.depths = model, depths
        self.states: dict[int, dict[bytes, torch.Tensor]] = {depth: {} for depth in depths}
        # the call in progress: its examples' keys (hashed once, read at every cached depth) and attention mask
        self._batch: tuple[list[bytes], torch.Tensor | None] | None = None
        self._tuple_output = False  # whether the cut module returns (hidden, ...) rather than hidden
        self._channels_last = False  # whether it returns image maps in channels-last layout

    @property
    def rows(self) -> dict[bytes, torch.Tensor]:
        """The cached examples (at the deepest depth; every depth holds the same ones)."""
        return self.states[self.depths[-1]]

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _remember_batch(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        inputs, attention_mask = kwargs.get(self.model.input_name, args[0] if args else None), kwargs.get("attention_mask")
        self._batch = (_row_keys(inputs, attention_mask), attention_mask)

    def run_to_cut(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model on `batch`, stopped once the deepest frozen group has run."""
        try:
            self.model(**batch)
        except _Captured:
            pass
        return torch.zeros(len(batch[self.model.input_name]), 1)

    def _capture(self, depth: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self._tuple_output = isinstance(output, tuple)
            hidden = output[0] if self._tuple_output else output
            self._channels_last = hidden.dim() == 4 and hidden.is_contiguous(memory_format=torch.channels_last)
            keys, attention_mask = self._batch
            masks = [None] * len(hidden) if attention_mask is None else attention_mask.bool()
            for key, states, mask in zip(keys, hidden, masks):
                self.states[depth][key] = (states if mask is None else states[mask]).float().clone()
            if depth == self.depths[-1]:
                raise _Captured

        return hook

    def refresh_batch_norm(self, features: Sequence[dict[str, Any]], collate: Callable, batch_size: int) -> FrozenLayerCache:
        """Re-estimate the frozen groups' BatchNorm statistics on `features` (AdaBN, Li et al. 2016), as the
        running averages of training would have; a no-op without BatchNorm. Fill after this."""
        units = self.model.prefix_units(self.depths[-1])
        stop = units[-1].register_forward_hook(_stop)
        try:
            layers = [layer for unit in units for layer in batch_norm_layers(unit)]
            recompute_batch_norm(self.model, layers, features, collate, batch_size, run=self.run_to_cut)
        finally:
            stop.remove()
        return self

    def fill(self, features: Sequence[dict[str, Any]], collate: Callable, length_of: Callable, batch_size: int) -> FrozenLayerCache:
        units = self.model.prefix_units(self.depths[-1])
        hooks = [
            self.model.register_forward_pre_hook(self._remember_batch, with_kwargs=True),
            *(units[len(self.model.prefix_units(depth)) - 1].register_forward_hook(self._capture(depth)) for depth in self.depths),
        ]
        try:
            map_batches(self.model, features, collate, lambda model, batch: self.run_to_cut(batch), length_of, batch_size)
        finally:
            for hook in hooks:
                hook.remove()
        return self

    def size_mb(self, features: Sequence[dict[str, Any]], collate: Callable, length_of: Callable) -> float:
        """The float32 states filling with `features` would hold, from the first example's: per token, or per image."""
        probe = FrozenLayerCache(self.model, self.depths).fill(features[:1], collate, length_of, 1)
        per_unit = sum(next(iter(probe.states[depth].values())).numel() for depth in self.depths) / length_of(features[0])
        return sum(length_of(f) for f in features) * per_unit * 4 / 2**20

    def largest_difference(self, features: Sequence[dict[str, Any]], collate: Callable) -> float:
        """The largest difference between the logits the model computes and those it computes served from the cache
        at each depth, on `features` (cached ones): zero up to rounding where the cut is where the network flows."""
        batch = model_inputs(features, collate, self._device)
        self.model.eval()
        with torch.no_grad():
            computed = self.model(**batch).logits
            gaps = []
            for depth in self.depths:
                with self.serving(depth):
                    gaps.append((self.model(**batch).logits - computed).abs().max().item())
        return max(gaps)

    def _lookup(self, depth: int) -> Callable:
        return lambda *args, **kwargs: self._cached_output(depth)

    def _cached_output(self, depth: int) -> Any:
        keys, attention_mask = self._batch
        try:
            rows = [self.states[depth][key] for key in keys]
        except KeyError:
            raise RuntimeError("an example outside the frozen-layer cache reached the cached model") from None
        if attention_mask is None:
            hidden = torch.stack(rows).to(self._device)
            if self._channels_last:
                hidden = hidden.contiguous(memory_format=torch.channels_last)
        else:
            mask = attention_mask.bool()
            hidden = rows[0].new_zeros(*mask.shape, rows[0].shape[-1])
            hidden[mask] = torch.cat(rows).to(hidden.device)
        return (hidden,) if self._tuple_output else hidden

    def _skip(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) if self._tuple_output else hidden

    @contextmanager
    def serving(self, frozen_groups: int | None = None) -> Iterator[None]:
        """Inside, the modules of the bottom `frozen_groups` layer groups (the deepest cached depth by default) read
        their cached output instead of computing it (their weights stay, so checkpoints and the returned model are
        unchanged); outside, the model is as it was."""
        depth = self.depths[-1] if frozen_groups is None else frozen_groups
        if depth not in self.states:
            raise ValueError(f"no cached output after {depth} layer groups; the cache holds {self.depths}")
        units = self.model.prefix_units(depth)
        hook = self.model.register_forward_pre_hook(self._remember_batch, with_kwargs=True)
        for unit in units[:-1]:
            unit.forward = self._skip
        units[-1].forward = self._lookup(depth)
        try:
            yield
        finally:
            hook.remove()
            for unit in units:
                del unit.forward
