"""A strategy decides what of a backbone trains and how; one module and one registration each.

Modelled on PEFT's tuners: a config dataclass per method and a registry by name, so that the CLI,
the comparison and the shared test matrix pick up a new strategy without being edited.
"""

from __future__ import annotations

import dataclasses
import difflib
from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from transferlab.backbones.base import CAPABILITIES, TransferModel
from transferlab.errors import UserError
from transferlab.settings import TrainingConfig, typed_values
from transferlab.training.loop import FitData, train_with_trainer


@dataclass
class StrategyConfig:
    """Hyperparameters of one strategy."""

    def validate(self) -> None:
        """Raise UserError for a value out of range."""


@dataclass
class TrainedStrategyConfig(StrategyConfig):
    """For strategies trained by gradient descent; `lr` applies unless the run sets one for all.

    `layer_decay` (eta < 1) turns on discriminative learning rates (ULMFiT's discriminative fine-tuning,
    Howard & Ruder 2018): the head trains at `lr`, each layer group below it at one more factor eta.
    """

    lr: float = 2e-5
    layer_decay: float | None = None

    def validate(self) -> None:
        if self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise UserError(f"layer_decay (eta) must be in (0, 1], got {self.layer_decay}")


class Strategy(ABC):
    """Hyperparameters in the constructor, `fit` returns the trained model (scikit-learn's shape)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type[StrategyConfig]] = TrainedStrategyConfig
    uses_peft: ClassVar[bool] = False  # the trained model is a peft wrapper: `train --keep-adapter` applies
    merges: ClassVar[bool] = True  # the trained model can be one plain classifier (ONNX, sentence-transformers exports)
    starts_at_pretrained: ClassVar[bool] = True  # prepare() leaves the model's function unchanged
    trains_backbone: ClassVar[bool] = True  # False: only a head on frozen features learns (seconds, not minutes)
    # False: the fit learns from the validation examples' labels, so its validation score flatters it (a search
    # that chooses on validation must leave it out; its test score stays honest)
    validation_is_held_out: ClassVar[bool] = True
    # False: a staged schedule keeps part of the model untrained early on by design, so its validation score mid-run
    # says little of where it ends; a search that prunes trials at equal steps judges it only at its end
    judged_mid_run: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset()  # model capabilities it needs (backbones/base.py: CAPABILITIES)

    def __init__(self, config: StrategyConfig | None = None, **overrides: Any):
        config = config or self.config_class()
        if overrides:
            known = {f.name for f in dataclasses.fields(config)}
            for key in overrides:
                if key not in known:
                    close = difflib.get_close_matches(key, known, n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(sorted(known))}"
                    raise UserError(f"strategy '{self.name}' has no setting '{key}'{hint}")
            config = dataclasses.replace(config, **typed_values(type(config), overrides, f"strategy '{self.name}'"))
        config.validate()
        self.config = config

    def reads_frozen_features(self) -> bool:
        """Whether `fit` starts from the pretrained backbone's last-layer pooled features (`FitData.frozen_features`),
        so features computed once for the data checks can stand in for a forward pass."""
        return False

    def sentence_transformers_refusal(self) -> str | None:
        """Why a sentence-transformers pipeline (body, pooling, dense) cannot hold the model this strategy trains, or
        None: asked before training, so that an export it cannot give is refused (or the strategy left out of a
        search) before any work."""
        return None

    def unsupported_reason(self, model: TransferModel) -> str | None:
        """Why this strategy cannot apply to this backbone, or None when it can."""
        missing = sorted(self.requires - model.capabilities)
        if missing:
            needs = " and ".join(CAPABILITIES[name] for name in missing)
            return f"{self.name} needs a backbone that {needs}: {type(model).__name__} does not"
        return None

    def prepare(self, model: TransferModel) -> nn.Module:
        """Freeze or wrap the model so that exactly the parameters this strategy trains require grad."""
        return model

    def fit(self, model: TransferModel, data: FitData, training: TrainingConfig) -> nn.Module:
        """Prepare the model, then train it with the Hugging Face Trainer."""
        prepared = self.prepare(model)
        return train_with_trainer(prepared, data, training, lr=self.learning_rate(training), lr_scale=self.lr_scale(model, data, training))

    def learning_rate(self, training: TrainingConfig) -> float:
        return training.lr or self.config.lr

    def lr_scale(self, model: TransferModel, data: FitData, training: TrainingConfig) -> Callable[[str], float] | None:
        """Per-parameter learning-rate multipliers from `layer_decay`; the table used goes to the log."""
        eta = getattr(self.config, "layer_decay", None)
        if eta is None:
            return None
        names = [g.name for g in model.layer_groups()]
        table = layer_lr_table(names, self.learning_rate(training), eta)
        data.log_history.append({"lr_table": dict(table)})
        scales = {name: lr / self.learning_rate(training) for name, lr in table}

        def scale(parameter: str) -> float:
            try:
                return scales[model.group_of(parameter)]
            except KeyError:  # a parameter the strategy added outside every layer (prompt and prefix tuning's
                return 1.0  # virtual tokens): new, like the head, so it trains at the head's rate

        return scale

    def expected_trainable_params(self, model: TransferModel) -> int:
        """The trainable-parameter count this strategy should produce on `model`, from its formula.

        Computed from the architecture, independently of requires_grad, so that the shared test
        matrix can check every registered strategy against its own formula.
        """
        raise NotImplementedError

    def export(self, model: nn.Module) -> nn.Module:
        """The model as it should be saved: plain weights, adapters merged where the strategy has any."""
        return model


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    if cls.name in STRATEGIES:
        raise ValueError(f"strategy '{cls.name}' is registered twice")
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str, **overrides: Any) -> Strategy:
    if name not in STRATEGIES:
        close = difflib.get_close_matches(name, STRATEGIES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown strategy '{name}'{hint} (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[name](**overrides)


def parse_strategy_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(STRATEGIES)
    for name in names:
        get_strategy(name)  # raises with a suggestion for an unknown name
    if not names:
        raise UserError("no strategy given")
    return names


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), each shared tensor counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def layer_lr_table(group_names: list[str], lr: float, eta: float) -> list[tuple[str, float]]:
    """lr_l = lr * eta^(L - l) over groups ordered bottom (embeddings) to top (head): the head gets lr."""
    top = len(group_names) - 1
    return [(name, lr * eta ** (top - i)) for i, name in enumerate(group_names)]


def matches_target(module_name: str, patterns: list[str]) -> bool:
    """peft's rule for a list of target names: the module name equals one or ends with '.' + one."""
    return any(module_name == p or module_name.endswith(f".{p}") for p in patterns)


def set_trainable(model: nn.Module, predicate: Callable[[str], bool]) -> None:
    """requires_grad on exactly the parameters whose names the predicate accepts."""
    for name, p in model.named_parameters():
        p.requires_grad = predicate(name)
