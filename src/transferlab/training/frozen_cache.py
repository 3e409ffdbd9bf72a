"""The frozen bottom of a text backbone, computed once per example instead of at every step.

In partial fine-tuning nothing below the lowest trainable layer learns. Run without dropout, those layers
give an example the same output at every step and every evaluation, so one pass in eval mode computes
it for the training and validation examples; during training the frozen layers are replaced by a lookup
of their cached output, and the trainable layers above start from it. Written by hand: neither
transformers nor peft caches a frozen prefix.

Gradual unfreezing moves the boundary down a block per stage, but the blocks below a boundary are still the
pretrained ones when that stage starts, so the same single pass keeps the output at every depth a stage will
need; `serving(depth)` switches between them.

Exact up to float rounding, once the frozen layers have no dropout: with the attention mask, a token's
state does not depend on how much padding its batch has, and padded positions (zeros here) are kept out
of every real token and of the pooling by the same mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from transferlab.training.inference import map_batches


class _Captured(Exception):
    """Stops the filling pass once the frozen layers have run: the layers above are not needed."""


def _row_key(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bytes:
    return input_ids[attention_mask.bool()].cpu().numpy().tobytes()


def cache_size_mb(features: Sequence[dict[str, Any]], length_of: Callable[[dict[str, Any]], int], hidden_size: int) -> float:
    """The float32 states the cache would hold: one row per real token."""
    return sum(length_of(f) for f in features) * hidden_size * 4 / 2**20


class FrozenLayerCache:
    """The output of a text classifier's bottom `frozen_layers` blocks, by example; given several depths, the
    output at each of them, from one pass."""

    def __init__(self, model: nn.Module, frozen_layers: int | Sequence[int]):
        depths = sorted({frozen_layers} if isinstance(frozen_layers, int) else set(frozen_layers))
        if not depths or not all(1 <= depth <= len(model.layer_stack()) for depth in depths):
            raise ValueError(f"frozen_layers must be between 1 and {len(model.layer_stack())}, got {frozen_layers}")
        self.model, self.depths = model, depths
        self.states: dict[int, dict[bytes, torch.Tensor]] = {depth: {} for depth in depths}
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None  # (input_ids, attention_mask) of the call in progress
        self._tuple_output = False  # whether the blocks return (hidden, ...) rather than hidden

    @property
    def rows(self) -> dict[bytes, torch.Tensor]:
        """The cached examples (at the deepest depth; every depth holds the same ones)."""
        return self.states[self.depths[-1]]

    def _remember_batch(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        input_ids, attention_mask = kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._batch = (input_ids, attention_mask)

    def fill(self, features: Sequence[dict[str, Any]], collate: Callable, length_of: Callable, batch_size: int) -> FrozenLayerCache:
        def capture(depth: int) -> Callable:
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                self._tuple_output = isinstance(output, tuple)
                hidden = output[0] if self._tuple_output else output
                input_ids, attention_mask = self._batch
                for ids, mask, states in zip(input_ids, attention_mask, hidden):
                    self.states[depth][_row_key(ids, mask)] = states[mask.bool()].float().clone()
                if depth == self.depths[-1]:
                    raise _Captured

            return hook

        def run_to_boundary(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            try:
                model(**batch)
            except _Captured:
                pass
            return torch.zeros(len(batch["input_ids"]), 1)

        stack = self.model.layer_stack()
        hooks = [
            self.model.register_forward_pre_hook(self._remember_batch, with_kwargs=True),
            *(stack[depth - 1].register_forward_hook(capture(depth)) for depth in self.depths),
        ]
        try:
            map_batches(self.model, features, collate, run_to_boundary, length_of, batch_size)
        finally:
            for hook in hooks:
                hook.remove()
        return self

    def _lookup(self, depth: int) -> Callable:
        return lambda *args, **kwargs: self._cached_output(depth)

    def _cached_output(self, depth: int) -> Any:
        input_ids, attention_mask = self._batch
        mask = attention_mask.bool()
        try:
            rows = [self.states[depth][_row_key(ids, m)] for ids, m in zip(input_ids, attention_mask)]
        except KeyError:
            raise RuntimeError("an example outside the frozen-layer cache reached the cached model") from None
        hidden = rows[0].new_zeros(*mask.shape, rows[0].shape[-1])
        hidden[mask] = torch.cat(rows).to(hidden.device)
        return (hidden,) if self._tuple_output else hidden

    def _skip(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) if self._tuple_output else hidden

    @contextmanager
    def serving(self, frozen_layers: int | None = None) -> Iterator[None]:
        """Inside, the bottom `frozen_layers` blocks (the deepest cached depth by default) read their cached output
        instead of computing it (their weights stay, so checkpoints and the returned model are unchanged);
        outside, the model is as it was."""
        depth = self.depths[-1] if frozen_layers is None else frozen_layers
        if depth not in self.states:
            raise ValueError(f"no cached output after {depth} blocks; the cache holds {self.depths}")
        blocks = list(self.model.layer_stack())[:depth]
        hook = self.model.register_forward_pre_hook(self._remember_batch, with_kwargs=True)
        for block in blocks[:-1]:
            block.forward = self._skip
        blocks[-1].forward = self._lookup(depth)
        try:
            yield
        finally:
            hook.remove()
            for block in blocks:
                del block.forward
