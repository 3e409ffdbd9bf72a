"""The forgetting meters as a before/after-fit hook: `forgetting_probe` reads the pretrained model before a
strategy fits (perplexity on general text, or every layer's pooled states for CKA) and installs the chosen
mitigations as `FitData.regularizer`; `Probe.after` reads the fitted model the same way. The summaries of the
readings (`summarize_forgetting`, `drift`) are what results.json and the report show.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from transferlab.errors import UserError
from transferlab.evaluation import forgetting as fg
from transferlab.evaluation.stats import mean_std
from transferlab.training.inference import default_device
from transferlab.training.loop import FitData

if TYPE_CHECKING:
    from transferlab.recipes.experiment import Experiment
    from transferlab.strategies import Strategy

_PRETRAINED_PERPLEXITY: dict[tuple[str, tuple[str, ...], int], float] = {}


def meter_for(model: nn.Module, requested: str | None) -> str:
    """The meter that fits what the backbone keeps: perplexity with an LM head, else CKA."""
    if requested in (None, "auto"):
        return "perplexity" if fg.has_lm_head(model) else "cka"
    if requested == "perplexity" and not fg.has_lm_head(model):
        raise UserError("the perplexity meter needs a backbone with its language-model head (a decoder such as smollm2-135m); use cka")
    return requested


@dataclass
class Probe:
    """A meter's reading of the pretrained model, and how to read the fitted one."""

    meter: str
    before: Any
    measure: Any  # model -> reading
    mitigations: list[str] = field(default_factory=list)

    def after(self, strategy: Strategy, model: nn.Module) -> dict[str, Any]:
        """Measure a copy of the fitted model with its adapters merged (the strategy's export)."""
        exported = strategy.export(copy.deepcopy(model))
        return {**self.measure(exported), "mitigations": self.mitigations}


def forgetting_probe(experiment: Experiment, model: nn.Module, data: FitData, seed: int, test: np.ndarray) -> Probe | None:
    """None unless the run measures forgetting (`forgetting.meter`) or mitigates it (`forgetting.mitigations`). CKA
    reads the first of `test` (the fold's test examples, by index into the data)."""
    cfg = experiment.config.forgetting
    if cfg.meter is None and not cfg.mitigations:
        return None
    meter = meter_for(model, cfg.meter)
    if meter == "sequential":
        raise UserError("the sequential meter trains two tasks: run it with 'transferlab forgetting --meter sequential'")
    texts: list[str] = []
    if fg.has_lm_head(model):
        choice, texts = fg.general_texts(cfg.general_text, experiment.config.dataset, cfg.general_examples + cfg.fisher_examples)
    measured, spare = texts[: cfg.general_examples], texts[cfg.general_examples :]
    tokenizer = getattr(experiment.preprocessor, "tokenizer", None)
    data.regularizer = single_task_mitigations(cfg, model, tokenizer, spare, experiment.config.training.batch_size, seed)
    if meter == "perplexity":
        path = experiment.backbone.path
        before = pretrained_perplexity(path, tokenizer, measured, cfg.general_max_length)

        def measure(fitted: nn.Module) -> dict[str, Any]:
            after = fg.perplexity(fg.lm_after(fitted, path), tokenizer, measured, cfg.general_max_length)
            return {"meter": "perplexity", "general_text": choice, "texts": len(measured), "before": before, "after": after}

        return Probe(meter, before, measure, list(cfg.mitigations))
    examples = experiment.features(test[: cfg.cka_examples])
    states = fg.layer_states(model, examples, experiment.preprocessor.collate)

    def measure_cka(fitted: nn.Module) -> dict[str, Any]:
        per_layer = fg.layer_cka(states, fg.layer_states(fitted, examples, experiment.preprocessor.collate))
        return {"meter": "cka", "examples": len(examples), "before": 1.0, "after": float(np.mean(per_layer)), "per_layer": per_layer}

    return Probe(meter, 1.0, measure_cka, list(cfg.mitigations))


def pretrained_perplexity(path: str, tokenizer: Any, texts: list[str], max_length: int) -> float:
    """The pretrained LM's perplexity, computed once per backbone and text sample."""
    key = (path, tuple(texts), max_length)
    if key not in _PRETRAINED_PERPLEXITY:
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(path).to(default_device())
        _PRETRAINED_PERPLEXITY[key] = fg.perplexity(lm, tokenizer, texts, max_length)
        del lm
    return _PRETRAINED_PERPLEXITY[key]


def single_task_mitigations(
    cfg: fg.ForgettingConfig, model: nn.Module, tokenizer: Any, general: list[str], batch_size: int, seed: int
) -> fg.Regularizers | None:
    """Mitigations when training starts from the pretrained model: anchored at it, with general text for a decoder."""
    terms = []
    for name in cfg.mitigations:
        if name == "l2sp":
            terms.append(fg.AnchorPenalty(fg.backbone_state(model), cfg.l2sp_alpha))
            continue
        if not fg.has_lm_head(model) or tokenizer is None:
            raise UserError(
                f"{name} from the pretrained model needs general text under the LM loss (a decoder such as smollm2-135m); "
                "on an encoder use l2sp, or the sequential meter where task A supplies the data"
            )
        if name == "ewc":
            fisher = fg.general_text_fisher(model, tokenizer, general, cfg.general_max_length)
            terms.append(fg.AnchorPenalty(fg.backbone_state(model), cfg.ewc_lambda, fisher))
        elif name == "replay":
            terms.append(
                fg.ReplayTerm(general, fg.lm_replay_loss(tokenizer, cfg.general_max_length), cfg.replay_fraction, batch_size, seed)
            )
    return fg.Regularizers(terms) if terms else None


def drift(reading: dict[str, Any]) -> float:
    """One number per meter, larger when more was forgotten and 0 when nothing was: the relative rise in
    perplexity, 1 - mean CKA to the pretrained layers, or the points of task A lost to task B."""
    if reading["meter"] == "perplexity":
        return reading["after"] / reading["before"] - 1
    if reading["meter"] == "cka":
        return 1.0 - reading["after"]
    return reading["before"] - reading["after"]


def summarize_forgetting(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean ± std of the meter's readings over a strategy's runs."""
    readings = [r["forgetting"] for r in runs if r.get("forgetting")]
    if not readings:
        return None
    return {
        "meter": readings[0]["meter"],
        "before": mean_std([r["before"] for r in readings]),
        "after": mean_std([r["after"] for r in readings]),
        "drift": mean_std([drift(r) for r in readings]),
        "mitigations": readings[0].get("mitigations", []),
    }
