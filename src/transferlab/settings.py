"""The training and forgetting settings of a run, and the defaults they start from: plain dataclasses.

This module imports nothing heavy (no torch, no scikit-learn), so the command line builds every option from these
fields, help texts included, in a fraction of a second; the code that acts on the settings lives with the trainer
(`training/loop.py`) and the forgetting meters (`evaluation/forgetting.py`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from transferlab.errors import UserError

DEFAULT_DATASET = "rt-polarity"
DEFAULT_N_TRAIN = 2000
# Below this many training examples a comparison cross-validates by default (one hold-out split is too noisy there),
# and the decision rules call the data small.
SMALL_DATA = 1000
DEFAULT_FOLDS = 5

# For multi-label data accuracy is subset accuracy (every label of an example right), micro_f1 pools every label
# decision (the default there), precision, recall and f1 are micro-averaged, and auroc is the mean over labels.
HEADLINE_METRICS = ("accuracy", "macro_f1", "micro_f1", "precision", "recall", "f1", "auroc", "mcc")
SCHEDULERS = ("linear", "cosine", "stlr")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CLASS_WEIGHTS = ("auto", "none", "balanced")
# Largest / smallest class count above which the headline metric defaults to macro-F1
IMBALANCED = 1.5
# ... and above which the data checks warn and `--class-weights auto` weights the loss: balanced weights gained LoRA
# and full fine-tuning 1.6-31 points of macro-F1 where a class had a few dozen examples or fewer (6.9:1 to 82:1), and
# nothing at 2.3:1 or where the small class had 63 (docs/findings.md, "Class weights by default")
SEVERE_IMBALANCE = 5.0


def typed_values(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` for the dataclass `cls`, each checked against its field's annotation, so that a config file's wrong
    type is refused by its key rather than failing deep in a run. YAML reads a number without a dot (`1e-4`) as text,
    so text that reads as the number a field takes becomes it; a list of names for a text field is joined with commas,
    as the command line writes it. Keys `cls` does not have are left to the caller."""
    annotations = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    typed = dict(values)
    for key, value in values.items():
        if key not in annotations:
            continue
        kinds = [kind.strip() for kind in annotations[key].split("|")]
        if value is None:
            if "None" in kinds:
                continue
            raise UserError(f"{where}: '{key}' needs a value")
        typed[key] = _typed(value, next(kind for kind in kinds if kind != "None"), f"{where}: '{key}'")
    return typed


def _number(value: Any, kind: type) -> float | int | None:
    """`value` as a float or an int, or None where it is not one (a bool, text that is no number, a fraction for an int)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's scalars too (a grid from np.arange)
        return None
    if kind is int:
        return int(value) if float(value).is_integer() else None
    return float(value)


def _typed(value: Any, kind: str, name: str) -> Any:
    if kind in ("float", "int"):
        number = _number(value, float if kind == "float" else int)
        if number is None:
            raise UserError(f"{name} takes {'a number' if kind == 'float' else 'a whole number'}, got {value!r}")
        return number
    if kind == "list[float]":
        if not isinstance(value, list):
            raise UserError(f"{name} takes a list of numbers, got {value!r}")
        return [_typed(item, "float", name) for item in value]
    if kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{name} takes true or false, got {value!r}")
        return value
    if kind == "str":
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return ",".join(value)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{name} takes text, got {value!r}")
    if kind.startswith("dict[") and not isinstance(value, dict):
        raise UserError(f"{name} takes a mapping of keys to values, got {value!r}")
    if kind.startswith("list[str]") and not (isinstance(value, (str, list))):
        raise UserError(f"{name} takes a list of names or comma-separated names, got {value!r}")
    return value


def check_class_weights(choice: str) -> None:
    """`--class-weights` and the estimator's `class_weights` take the same choices."""
    if choice not in CLASS_WEIGHTS:
        raise UserError(f"class weights must be one of {', '.join(CLASS_WEIGHTS)}, got '{choice}'")


# The optimizer-step floor: on rt-polarity at 8 sentences per class (minilm-l6), LoRA and full fine-tuning stay at
# chance with their 3 epochs (3 steps), reach 0.53-0.55 macro-F1 with 100 steps, and gain nothing more with 200
# (docs/findings.md, "Small data").
MIN_STEPS = 100
# Below this many validation examples nothing is chosen on validation (early stopping, the calibration temperature,
# the decision threshold): one example is 2 points of accuracy, and a score's standard error on 50 is 7 points,
# more than most gaps between checkpoints.
MIN_VALIDATION = 50
# Up to this share of the labelled examples may validate where a command needs MIN_VALIDATION of them (auto's search,
# a study that reads validation curves); below it the examples are too few to spare.
MAX_VALIDATION_SHARE = 1 / 3


def validation_fraction(wanted: int, labelled: int) -> float:
    """The `val_fraction` that splits `wanted` validation examples off `labelled` (a little over: it rounds to them)."""
    return (wanted + 0.4) / labelled


METERS = ("perplexity", "sequential", "cka")
MITIGATIONS = ("ewc", "replay", "l2sp")
GENERAL_TEXTS = ("auto", "bbc-news", "python-docs")


@dataclass
class TrainingConfig:
    epochs: float = field(default=3, metadata={"help": "training epochs [default: 3]"})
    batch_size: int = field(default=16, metadata={"help": "training batch size [default: 16]"})
    eval_batch_size: int = 64
    lr: float | None = field(default=None, metadata={"help": "one learning rate for every strategy [default: each strategy's own]"})
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    scheduler: str = field(default="linear", metadata={"help": "linear, cosine or stlr (ULMFiT's slanted triangular) [default: linear]"})
    patience: int = 3
    evals_per_epoch: int = 2
    # Small data: however few examples, train at least this many optimizer steps (warm-up scales with them).
    # 3 epochs of 14 examples are 3 steps, all inside the warm-up: what is evaluated is the random head.
    min_steps: int = MIN_STEPS
    gradient_accumulation: int = 1
    # None: accuracy, or macro-F1 when the classes are imbalanced (decided by the run)
    metric: str | None = field(
        default=None,
        metadata={
            "help": "headline metric, also used for early stopping [default: accuracy, macro_f1 past 1.5:1]; with two "
            "classes f1, precision and recall score the label whose name sorts second"
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "what training steps compute in: auto, fp32, bf16 or fp16; evaluation and export stay fp32 "
            "[default: auto: bf16 where the GPU or CPU computes it natively, else fp32]"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for the split, the head and training [default: 0]"})

    @property
    def headline_metric(self) -> str:
        return self.metric or "accuracy"

    def validate(self) -> None:
        checks = [
            (0 < self.epochs < math.inf, f"epochs must be positive, got {self.epochs}"),
            (self.batch_size > 0, f"batch size must be positive, got {self.batch_size}"),
            (self.eval_batch_size > 0, f"eval_batch_size must be positive, got {self.eval_batch_size}"),
            (self.gradient_accumulation >= 1, f"gradient_accumulation must be at least 1, got {self.gradient_accumulation}"),
            (self.evals_per_epoch >= 1, f"evals_per_epoch must be at least 1, got {self.evals_per_epoch}"),
            (self.lr is None or 0 < self.lr < math.inf, f"learning rate must be positive, got {self.lr}"),
            (0 <= self.weight_decay < math.inf, f"weight_decay must be 0 or more, got {self.weight_decay}"),
            (0 <= self.warmup_ratio < 1, f"warm-up ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {', '.join(SCHEDULERS)}, got '{self.scheduler}'"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (self.min_steps >= 0, f"min_steps must be 0 or more, got {self.min_steps}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'"),
            (
                self.metric is None or self.metric in HEADLINE_METRICS,
                f"metric must be one of {', '.join(HEADLINE_METRICS)}, got '{self.metric}'",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


@dataclass
class ForgettingConfig:
    """The `forgetting:` block of a run config: which meter, which mitigations and their weights."""

    # None: not measured; auto: perplexity for a backbone with an LM head, else cka
    meter: str | None = field(
        default=None, metadata={"help": "perplexity (decoders), sequential (task A then task B) or cka [default: by backbone]"}
    )
    mitigations: list[str] = field(
        default_factory=list, metadata={"help": "comma-separated: ewc, replay, l2sp [default: none]", "flag": "--mitigation"}
    )
    # lambda in lambda/2 sum F (theta - theta*)^2 (the Fisher of a trained model is small)
    ewc_lambda: float = field(default=1e4, metadata={"help": "EWC weight lambda [default: 1e4]"})
    # alpha in alpha/2 ||theta - theta0||^2
    l2sp_alpha: float = field(default=0.1, metadata={"help": "L2-SP weight alpha [default: 0.1]"})
    # replayed from the previous task, or general text
    replay_fraction: float = field(default=0.25, metadata={"help": "share of each batch replayed [default: 0.25]"})
    fisher_examples: int = 128  # examples (or general texts) the diagonal Fisher is estimated on
    task_b: str = field(default="bbc-news", metadata={"help": "second task of the sequential meter [default: bbc-news]"})
    task_b_lr: float | None = field(default=None, metadata={"help": "task B's learning rate [default: --lr]"})
    general_text: str = field(default="auto", metadata={"help": "auto, bbc-news or python-docs: held-out text for perplexity"})
    general_examples: int = 64  # general texts measured
    general_max_length: int = 64  # tokens per general text
    cka_examples: int = 256  # task examples the CKA is computed on
    objective: str = field(
        default="classification", metadata={"help": "classification, or lm: fine-tune a decoder's LM on the task's texts (full, lora, ...)"}
    )

    def validate(self) -> None:
        if self.meter is not None and self.meter not in ("auto", *METERS):
            raise UserError(f"forgetting meter must be one of {', '.join(METERS)}, got '{self.meter}'")
        unknown = set(self.mitigations) - set(MITIGATIONS)
        if unknown:
            raise UserError(f"unknown mitigation {', '.join(sorted(unknown))}: choose from {', '.join(MITIGATIONS)}")
        checks = [
            (self.objective in ("classification", "lm"), f"objective must be classification or lm, got '{self.objective}'"),
            (self.objective != "lm" or not self.mitigations, "mitigations apply to classification training, not the LM objective"),
            (self.general_text in GENERAL_TEXTS, f"general_text must be one of {', '.join(GENERAL_TEXTS)}, got '{self.general_text}'"),
            (self.ewc_lambda >= 0, f"ewc_lambda must not be negative, got {self.ewc_lambda}"),
            (self.l2sp_alpha >= 0, f"l2sp_alpha must not be negative, got {self.l2sp_alpha}"),
            (0 < self.replay_fraction < 1, f"replay_fraction must be in (0, 1), got {self.replay_fraction}"),
            (self.task_b_lr is None or self.task_b_lr > 0, f"task_b_lr must be positive, got {self.task_b_lr}"),
        ]
        for name in ("fisher_examples", "general_examples", "general_max_length", "cka_examples"):
            checks.append((getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}"))
        for ok, message in checks:
            if not ok:
                raise UserError(message)
