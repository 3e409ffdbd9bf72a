"""A run's full configuration: plain dataclasses, read from and written to plain YAML.

The backbones and strategies the config checks against are imported where they are used, not with the module: the
command line builds its options from these fields and answers `--help` without loading torch."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from transferlab.catalog import DEFAULT_BACKBONE
from transferlab.data.checks import NEAR_DUPLICATE_COSINE
from transferlab.errors import UserError
from transferlab.settings import (
    DEFAULT_DATASET,
    DEFAULT_FOLDS,
    DEFAULT_N_TRAIN,
    SEVERE_IMBALANCE,
    SMALL_DATA,
    ForgettingConfig,
    TrainingConfig,
    check_class_weights,
    typed_values,
)

if TYPE_CHECKING:
    from transferlab.backbones import BackboneFamily

DEFAULT_STRATEGIES = ["head", "full", "lora"]


@dataclass
class RunConfig:
    backbone: str = field(
        default=DEFAULT_BACKBONE, metadata={"help": "catalog name (see 'transferlab list'), a local model folder, or a hub id"}
    )
    dataset: str = field(default=DEFAULT_DATASET, metadata={"help": "catalog name or a .csv/.jsonl/.parquet file"})
    text_column: str = field(default="text", metadata={"help": "text column of your file [default: text]"})
    label_column: str = field(default="label", metadata={"help": "label column of your file [default: label]"})
    label_separator: str | None = field(
        default=None,
        metadata={
            "help": "multi-label data: each label cell holds a set of labels split at this separator, e.g. ';' for "
            "'news;sport' (sigmoid outputs, a threshold per label) [default: one class per example]"
        },
    )
    label_columns: str | None = field(
        default=None,
        metadata={
            "help": "multi-label data as one 0/1 column per label, comma-separated, e.g. 'toxic,obscene,insult' [default: --label-column]"
        },
    )
    test_dataset: str | None = field(
        default=None,
        metadata={"help": "your own test file (same columns): evaluated as given; training drops its inputs [default: a split]"},
    )
    validation_dataset: str | None = field(
        default=None, metadata={"help": "your own validation file, with --test-dataset [default: carved from --dataset]"}
    )
    strategies: list[str] = field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    strategy_settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. {"lora": {"r": 16}}
    n_train: int | None = field(default=None, metadata={"help": "labelled examples to learn from, validation included [default: 2000]"})
    n_test: int | None = field(default=None, metadata={"help": "held-out test examples [default: 1000]"})
    val_fraction: float = 0.1
    max_length: int = field(default=128, metadata={"help": "tokens per example after truncation [default: 128]"})
    pooling: str = field(default="auto", metadata={"help": "auto, mean, cls or last (token) [default: auto: mean, last for a decoder]"})
    cv: int | None = field(
        default=None, metadata={"help": "stratified folds; 1 for one hold-out split [default: 5 below 1,000 training examples, else 1]"}
    )
    seeds: int = field(default=1, metadata={"help": "training runs per split with seeds seed, seed+1, ... [default: 1]"})
    class_weights: str = field(
        default="auto",
        metadata={
            "help": "balanced: cross-entropy weighted by w_c = N / (C n_c), also in the head's regression; none: unweighted; "
            f"auto: balanced when the largest class outnumbers the smallest by more than {SEVERE_IMBALANCE:g}:1 [default: auto]"
        },
    )
    calibration: str = field(
        default="temperature",
        metadata={
            "help": "temperature: divide the logits by one T fitted on the validation split (Guo et al.'s temperature scaling), "
            "so probabilities say how often the model is right; none: raw softmax [default: temperature]"
        },
    )
    threshold: str = field(
        default="auto",
        metadata={
            "help": "auto: a binary task scored by f1, macro_f1 or mcc predicts class 1 above a cut tuned on the validation "
            "split for that metric; none: the most probable class [default: auto]"
        },
    )
    oversample: bool = field(default=False, metadata={"help": "resample minority classes in the training examples"})
    imbalance: float | None = field(
        default=None, metadata={"help": "first subsample to this minority share (0.1 makes a balanced binary set 9:1)"}
    )
    # None: the backbone family's default, none for text, flips for images. Text: delete, swap
    # (extra training copies, data/augment.py); images: crop, flip, jitter, randaugment (random, per batch).
    augment: list[str] | None = field(
        default=None,
        metadata={
            "help": "comma-separated training augmentations; text: delete, swap; images: crop, flip, jitter, randaugment, mixup, or none"
        },
    )
    augment_copies: int = 1
    image_column: str = field(default="path", metadata={"help": "image path column of your table, relative to it [default: path]"})
    image_size: int = field(default=224, metadata={"help": "input resolution of a CNN backbone [default: 224]"})
    normalization: str = field(
        default="auto", metadata={"help": "auto (the weights' own mean/std), or force imagenet, half, none or raw (0-255) [default: auto]"}
    )
    skip_bad_images: bool = field(default=False, metadata={"help": "leave unreadable images out with a warning"})
    near_duplicate_cosine: float | None = NEAR_DUPLICATE_COSINE  # texts this similar count as copies; None: no check
    label_issues: bool = True  # rank likely label errors with cleanlab (label_issues.csv)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)  # meter and mitigations of catastrophic forgetting

    def folds(self, dataset_size: int) -> int:
        """Cross-validation folds; 1 means a hold-out split."""
        if self.cv is not None:
            return self.cv
        if self.test_dataset is not None:
            return 1
        n_train = self.n_train if self.n_train is not None else min(DEFAULT_N_TRAIN, dataset_size)
        return DEFAULT_FOLDS if n_train < SMALL_DATA else 1

    @property
    def family(self) -> BackboneFamily:
        """The backbone's registered family: its defaults, and what its examples are."""
        from transferlab.backbones import family_for

        return family_for(self.backbone)

    @property
    def labels(self) -> str | list[str]:
        return label_source(self.label_column, self.label_columns)

    @property
    def modality(self) -> str:
        """What the examples are (text or image): how data files are read."""
        return self.family.inputs

    def augmentations(self) -> list[str]:
        if self.augment is not None:
            return self.augment
        return list(self.family.default_augment)

    def training_for_seed(self, seed: int) -> TrainingConfig:
        return dataclasses.replace(self.training, seed=seed)

    def validate(self) -> None:
        from transferlab.backbones.cnn import NORMALIZATIONS
        from transferlab.backbones.text import POOLINGS

        if self.pooling not in POOLINGS:
            raise UserError(f"pooling must be one of {', '.join(POOLINGS)}, got '{self.pooling}'")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name, value in (
            ("n_train", self.n_train),
            ("n_test", self.n_test),
            ("max_length", self.max_length),
            ("seeds", self.seeds),
            ("cv", self.cv),
            ("augment_copies", self.augment_copies),
            ("image_size", self.image_size),
        ):
            if value is not None and value < 1:
                raise UserError(f"{name} must be positive, got {value}")
        if self.test_dataset is not None and self.cv is not None and self.cv > 1:
            raise UserError("--cv splits --dataset into folds, but --test-dataset fixes the test set: use --seeds for repeated runs")
        if self.validation_dataset is not None and self.test_dataset is None:
            raise UserError("--validation-dataset needs --test-dataset: without it the test set is carved from --dataset")
        if self.near_duplicate_cosine is not None and not 0 < self.near_duplicate_cosine <= 1:
            raise UserError(f"near_duplicate_cosine must be in (0, 1], got {self.near_duplicate_cosine}")
        if self.threshold not in ("auto", "none"):
            raise UserError(f"threshold must be auto or none, got '{self.threshold}'")
        if self.calibration not in ("temperature", "none"):
            raise UserError(f"calibration must be temperature or none, got '{self.calibration}'")
        check_class_weights(self.class_weights)
        if self.label_separator is not None or self.label_columns is not None:
            self._check_multi_label()
        known = self.family.augmentations
        unknown = set(self.augmentations()) - set(known)
        if unknown:
            raise UserError(f"unknown {self.modality} augmentation {', '.join(sorted(unknown))}: choose from {', '.join(known)}")
        if self.normalization != "auto" and self.normalization not in NORMALIZATIONS:
            raise UserError(f"normalization must be auto, {', '.join(NORMALIZATIONS)}; got '{self.normalization}'")
        self.training.validate()
        self.forgetting.validate()
        if not self.strategies:
            raise UserError("no strategy given: name one or more, comma-separated")
        repeated = sorted({name for name in self.strategies if self.strategies.count(name) > 1})
        if repeated:
            raise UserError(f"strategy {', '.join(repeated)} named more than once: each strategy runs once per fold and seed")
        for name in self.strategies:
            self.strategy(name)  # unknown names and bad settings fail here, before any work
        unused = set(self.strategy_settings) - set(self.strategies)
        if unused:
            raise UserError(f"settings given for strategies not in the run: {', '.join(sorted(unused))}")

    def _check_multi_label(self) -> None:
        """What balances or blends classes assumes one class per example."""
        if self.label_separator == "":
            raise UserError("--label-separator must be at least one character")
        if self.label_columns is not None:
            if self.label_separator is not None:
                raise UserError("--label-columns and --label-separator are two layouts of multi-label data: give one")
            columns = self.labels
            if len(columns) < 2 or "" in columns:
                raise UserError(
                    f"--label-columns '{self.label_columns}': name two or more columns, comma-separated; one 0/1 column is a "
                    "binary label (--label-column)"
                )
        self.refuse_single_class_options()

    def refuse_single_class_options(self) -> None:
        """Multi-label data (by its options, or found in list-valued label cells) refuses what assumes one class per
        example."""
        for name, used in (
            ("--class-weights balanced", self.class_weights == "balanced"),
            ("--oversample", self.oversample),
            ("--imbalance", self.imbalance is not None),
            ("mixup", "mixup" in self.augmentations()),
        ):
            if used:
                raise UserError(f"{name} balances or blends single classes; it does not apply to multi-label data")

    def strategy(self, name: str):
        return strategy_for(name, self.family, self.strategy_settings.get(name))

    def resolved(self) -> dict[str, Any]:
        """Everything the run used, strategy defaults included."""
        out = dataclasses.asdict(self)
        out["strategy_settings"] = {name: dataclasses.asdict(self.strategy(name).config) for name in self.strategies}
        return out


def label_source(label_column: str | None, label_columns: str | None) -> str | list[str] | None:
    """Where a table's labels are: one column, or (from a comma-separated --label-columns) one 0/1 column per label."""
    return label_column if label_columns is None else [c.strip() for c in label_columns.split(",")]


def strategy_for(name: str, family: BackboneFamily, settings: dict[str, Any] | None = None):
    """The strategy with its settings: the backbone family's defaults, then the user's."""
    from transferlab.strategies import get_strategy

    defaults = family.strategy_defaults.get(name, {})
    return get_strategy(name, **{**defaults, **(settings or {})})


def comma_list(value: str) -> list[str]:
    """Names written as on the command line: comma-separated, "none" for none."""
    return [item.strip() for item in value.split(",") if item.strip() not in ("", "none")]


def _checked_fields(cls: type, values: Any, where: str) -> dict[str, Any]:
    """Unknown keys and wrong types refused (`typed_values`); a list field may also be written as the command line takes
    it (`augment: flip,crop`)."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: takes a mapping of keys to values, got {values!r}")
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UserError(f"{where}: unknown key '{key}'{hint}")
        if fields[key].startswith("list[str]") and value is not None:
            if isinstance(value, str):
                values[key] = comma_list(value)
            elif not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise UserError(f"{where}: '{key}' takes a list of names or comma-separated names, got {value!r}")
    return typed_values(cls, values, where)


def apply_to_strategies(config: RunConfig, settings: dict[str, Any]) -> None:
    """Give a setting such as `freeze_below` or `layer_decay` to every chosen strategy that has it."""
    from transferlab.strategies import get_strategy

    for key, value in settings.items():
        if value is None:
            continue
        takers = [name for name in config.strategies if key in {f.name for f in dataclasses.fields(get_strategy(name).config)}]
        if not takers:
            raise UserError(f"none of the chosen strategies ({', '.join(config.strategies)}) has a setting '{key}'")
        for name in takers:
            config.strategy_settings.setdefault(name, {})[key] = value


def load_run_config(
    path: Path | None, strategy_wide: dict[str, Any] | None = None, default_strategies: list[str] | None = None, **overrides: Any
) -> RunConfig:
    """YAML file (optional) first, then the command line's explicit options on top.

    `strategy_wide` settings go to every chosen strategy that has them (`--freeze-below`, `--layer-decay`);
    `default_strategies`: the command's own choice where neither the file nor the command line names strategies.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: cannot read config: {str(err).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: a config is a mapping of keys to values")
    training_values, forgetting_values = values.pop("training", None) or {}, values.pop("forgetting", None) or {}
    values = _checked_fields(RunConfig, values, str(path))
    for name, settings in (values.get("strategy_settings") or {}).items():
        if not isinstance(settings, dict):
            raise UserError(f"{path}: strategy_settings: '{name}' takes a mapping of settings, got {settings!r}")
    training = _checked_fields(TrainingConfig, training_values, f"{path}: training")
    training.update({k: v for k, v in overrides.pop("training", {}).items() if v is not None})
    forgetting = _checked_fields(ForgettingConfig, forgetting_values, f"{path}: forgetting")
    forgetting.update({k: v for k, v in overrides.pop("forgetting", {}).items() if v is not None})
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "strategies" not in values and default_strategies is not None:
        values["strategies"] = default_strategies
    config = RunConfig(**values, training=TrainingConfig(**training), forgetting=ForgettingConfig(**forgetting))
    apply_to_strategies(config, strategy_wide or {})
    config.validate()
    return config
