"""The decision framework, with its domain-gap table: data size x domain gap x tasks x memory -> strategy.

Pure logic, no models: `recipes/recommend.py` measures the inputs, this decides. Rules, first match wins:

| scenario | strategy |
|---|---|
| several tasks share the backbone | lora (PEFT: one adapter per task) |
| memory below what full fine-tuning needs | lora (PEFT: only the adapter trains and is stored) |
| text, few-shot (<= 128 examples per class on average) | setfit (contrastive pairs, then the head) |
| small data (< 1k), small gap | head (feature extraction, frozen backbone) |
| small data, medium gap | partial (fine-tune with frozen early layers, per the gap table) |
| small data, large gap | lora (PEFT or gradual unfreezing) |
| medium data (1k-10k), not in the tree: the gap table | small gap lora (light fine-tuning), medium partial, large full |
| large data (> 10k) | full (small gap: converges quickly; otherwise longer training) |
"""

from __future__ import annotations

from dataclasses import dataclass

from transferlab.settings import SMALL_DATA

LARGE_DATA = 10_000
# Up to this many examples per class, SetFit's contrastive pairs beat the head on frozen features for text, and led
# full fine-tuning and LoRA on the mean wherever they were measured (bench/small_data.py at 8, 32, 64 and 128 per
# class on rt-polarity, 128 on election-tweets-2016, 64 on the 6 classes of trec-questions, 112 on average on
# reuters-r8 in its own proportions; docs/benchmarks.md), by the margins and at the prices FEW_SHOT_PRICE quotes.
# 128 is the largest size measured. The mean, not the rarest class: a large data set with one rare class
# (reuters-r8: 7,674 texts, 51 of "grain") is not few-shot. On few-shot draws in their own class proportions, SetFit with balanced class weights in its head was
# level with the head on frozen features (sms-spam, 56:8) or far ahead (trec-questions, one rare type).
FEW_SHOT_PER_CLASS = 128
# What the limit buys and what it costs at the limit, quoted in the recommendation's reason
FEW_SHOT_PRICE = (
    f"measured ahead of full fine-tuning up to {FEW_SHOT_PER_CLASS} per class on 2- and 3-class sets (by 1.5 points there, "
    "at 12-14x its time on short sentences), at 64 per class on 6 classes (by 5 points) and on 896 news wires in 8 "
    "imbalanced topics (by 3-6 points of macro-F1 over class-weighted fine-tuning, at 21x its time)"
)
ADAM_BYTES_PER_PARAM = 16  # fp32 weights, gradients and Adam's two moments: full fine-tuning's floor before activations

# Typical epochs: (modality, kind) -> (normal, longer training for a large gap)
EPOCHS = {
    ("text", "full"): (3, 4),
    ("image", "full"): (10, 15),
    ("text", "peft"): (5, 10),
    ("image", "peft"): (10, 15),
}


@dataclass(frozen=True)
class Situation:
    n_train: int
    gap: str  # small | medium | large
    tasks: int = 1
    memory_gb: float | None = None  # memory available for training; None: not constrained
    full_finetune_gb: float = 0.0  # what full fine-tuning of this backbone needs (ADAM_BYTES_PER_PARAM x parameters)
    modality: str = "text"
    gap_note: str = ""  # how the gap was measured, quoted in the reasons
    classes: int | None = None  # how many classes the labels have; None: not known


@dataclass(frozen=True)
class Decision:
    strategy: str
    epochs: int | None  # None: the strategy does not train by epochs (head fits a logistic regression)
    reasons: list[str]


def data_bucket(n_train: int) -> str:
    return "small" if n_train < SMALL_DATA else "large" if n_train > LARGE_DATA else "medium"


def decide(s: Situation) -> Decision:
    """The decision framework's first matching rule, with its reasons in plain words."""
    size = data_bucket(s.n_train)
    reasons = [
        f"data size: {size} ({s.n_train:,} labelled examples; small < {SMALL_DATA:,}, large > {LARGE_DATA:,})",
        f"domain gap: {s.gap}{s.gap_note}",
        f"tasks: {s.tasks}",
    ]
    constrained = s.memory_gb is not None and s.memory_gb < s.full_finetune_gb
    if s.memory_gb is not None:
        fits = "below" if constrained else "enough for"
        reasons.append(f"memory: {s.memory_gb:g} GB, {fits} full fine-tuning's {s.full_finetune_gb:.2f} GB (weights, gradients, Adam)")
    longer = s.gap == "large"
    if s.tasks > 1:
        return _decision("lora", s, longer, reasons + ["multiple tasks, shared backbone: PEFT, one adapter per task"])
    if constrained:
        return _decision("lora", s, longer, reasons + ["memory constrained: PEFT, only the adapter deltas train and are stored"])
    per_class = s.n_train / s.classes if s.classes else None
    if s.modality == "text" and per_class is not None and per_class <= FEW_SHOT_PER_CLASS:
        few = (
            f"few-shot ({per_class:.3g} examples per class, <= {FEW_SHOT_PER_CLASS}): SetFit's contrastive pairs, then the head; "
            + FEW_SHOT_PRICE
        )
        return _decision("setfit", s, longer, reasons + [few])
    if size == "small":
        rule = {
            "small": ("head", "small data, small domain gap: feature extraction (frozen backbone)"),
            "medium": ("partial", "small data, medium domain gap: fine-tune with frozen early layers"),
            "large": ("lora", "small data, large domain gap: PEFT (LoRA) rather than full fine-tuning"),
        }[s.gap]
    elif size == "medium":
        rule = {
            "small": ("lora", "between small and large data, small gap: light fine-tuning (LoRA, the default PEFT)"),
            "medium": ("partial", "between small and large data, medium gap: fine-tune with frozen early layers"),
            "large": ("full", "between small and large data, large gap: full fine-tuning"),
        }[s.gap]
    else:
        how = "with longer training" if longer else "(converges quickly)"
        rule = ("full", f"large data, {s.gap} domain gap: full fine-tuning {how}")
    return _decision(rule[0], s, longer, reasons + [rule[1]])


def _decision(strategy: str, s: Situation, longer: bool, reasons: list[str]) -> Decision:
    if strategy in ("head", "setfit"):  # a logistic regression, and one pass over the pairs: no epochs to choose
        return Decision(strategy, None, reasons)
    normal, long = EPOCHS[(s.modality, "peft" if strategy == "lora" else "full")]
    return Decision(strategy, long if longer else normal, reasons)
