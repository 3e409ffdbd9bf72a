"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021), written by hand.

peft has no bottleneck adapters, and the `adapters` package (AdapterHub) pins transformers 4, so
this small module inserts them: `x + f(x W_down) W_up` after a layer's output projection, before
its residual connection and layer norm. W_up starts at zero, so a freshly adapted model computes
exactly the pretrained function. Houlsby puts one after attention and one after the feed-forward
block; Pfeiffer only after the feed-forward block. Each adapter has 2 d r + r + d parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.errors import UserError

ADAPTER_KINDS = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}


class BottleneckAdapter(nn.Module):
    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class AdaptedLinear(nn.Module):
    """A projection followed by its adapter; `base` keeps the pretrained weights."""

    def __init__(self, base: nn.Linear, bottleneck: int):
        super().__init__()
        self.base = base
        self.adapter = BottleneckAdapter(base.out_features, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def output_projections(layer: nn.Module, hidden: int) -> dict[str, str]:
    """The attention block's and the feed-forward block's output projections inside one layer.

    By module order, which holds for BERT, RoBERTa, MPNet, DistilBERT, Llama and Qwen alike: the
    feed-forward output is the last linear layer; the attention output is the last linear layer back to
    the hidden size before the first one that widens it (the feed-forward up-projection). Widens, not
    merely leaves it: with grouped-query attention the key and value projections are narrower.
    """
    linears = [(name, m) for name, m in layer.named_modules() if isinstance(m, nn.Linear)]
    first_up = next((i for i, (_, m) in enumerate(linears) if m.out_features > hidden), None)
    attention = [name for name, m in linears[:first_up] if m.out_features == hidden] if first_up else []
    if not attention:
        kinds = sorted({type(m).__name__ for m in layer.modules()} - {type(layer).__name__})
        raise UserError(
            f"bottleneck adapters find no attention and feed-forward projections (torch Linear layers) in a "
            f"{type(layer).__name__} (it holds {', '.join(kinds[:6])}); choose lora or another strategy"
        )
    return {"attention": attention[-1], "ffn": linears[-1][0]}


def insert_adapters(layers: nn.ModuleList, hidden: int, kind: str, bottleneck: int) -> None:
    for layer in layers:
        for site, name in output_projections(layer, hidden).items():
            if site in ADAPTER_KINDS[kind]:
                parent_name, _, child = name.rpartition(".")
                parent = layer.get_submodule(parent_name) if parent_name else layer
                setattr(parent, child, AdaptedLinear(getattr(parent, child), bottleneck))
