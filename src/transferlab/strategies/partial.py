"""Partial fine-tuning (frozen early layers) and gradual unfreezing (ULMFiT), both by the backbone's layer groups."""

from __future__ import annotations

import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import TrainerCallback

from transferlab.backbones.base import TransferModel
from transferlab.errors import UserError
from transferlab.settings import TrainingConfig
from transferlab.strategies.base import Strategy, TrainedStrategyConfig, register_strategy, set_trainable
from transferlab.training.batch_norm import batch_norm_sample
from transferlab.training.frozen_cache import FrozenLayerCache
from transferlab.training.inference import training_precision
from transferlab.training.loop import FitData, train_with_trainer, training_plan


def _check_freeze_below(k: int, groups: int) -> None:
    if not 0 <= k < groups:
        raise UserError(f"freeze_below must be between 0 and {groups - 1} (the head always trains), got {k}")


@dataclass
class FrozenBlocksConfig(TrainedStrategyConfig):
    # The frozen layer groups run once per example in eval mode and are looked up at every step
    # (training/frozen_cache.py), unless the cache would pass cache_limit_mb or training varies the inputs
    # without bound (crops, jitter, mixup; a flip only doubles them).
    cache_frozen: bool = True
    cache_limit_mb: float = 2048.0


MAX_CUT_ERROR = 1e-4  # logits served from the cache may differ from the computed ones by float rounding only


def frozen_layer_cache(model: TransferModel, data: FitData, training: TrainingConfig, config: FrozenBlocksConfig, depths: list[int]):
    """One pass computing the output of the bottom `depths` frozen layer groups for the training and validation
    examples (each training example in every version its augmentation can make), or None where the cache does not
    apply; the run's log says why when it is the augmentation, the size or the network."""
    if not config.cache_frozen or "prefix_cut" not in model.capabilities:
        return None
    depths = sorted({depth for depth in depths if model.prefix_units(depth)})
    if not depths:
        return None

    def off(reason: str) -> None:
        data.log_history.append({"frozen_layer_cache": f"off: {reason}"})

    examples = training_variants(data)
    if examples is None:
        return off("training augments the inputs without bound")
    sample = examples[:8]
    gap = FrozenLayerCache(model, depths).fill(sample, data.collate, data.length_of, len(sample)).largest_difference(sample, data.collate)
    if gap > MAX_CUT_ERROR:
        return off(f"the network does not flow through the cut (logits differ by {gap:.2g})")
    cache = FrozenLayerCache(model, depths)
    size = cache.size_mb(examples, data.collate, data.length_of)
    if size > config.cache_limit_mb:
        return off(f"{size:.0f} MB would pass cache_limit_mb ({config.cache_limit_mb:.0f})")
    started = time.perf_counter()
    # at the training batch size: a CNN at 224 px computes a batch of 16 images 25% faster per image than one of 64
    cache.refresh_batch_norm(batch_norm_sample(data.train, training.seed), data.collate, training.batch_size)
    with training_precision(training):  # the frozen groups computed as a training step would compute them
        cache.fill(examples, data.collate, data.length_of, training.batch_size)
    data.log_history.append(
        {
            "frozen_layer_cache": {
                "groups": depths,
                "examples": len(cache.rows),
                "mb": round(size, 1),
                "seconds": round(time.perf_counter() - started, 2),
            }
        }
    )
    return cache


def training_variants(data: FitData) -> list[dict[str, Any]] | None:
    """Every version of every example that training or validation can show (a small validation set joins training),
    or None when they are unbounded."""
    examples = data.train + data.val
    if data.mixup_alpha is not None:
        return None
    if data.train_transform is None:
        return examples
    if data.train_variants is None:
        return None
    versions = [data.train_variants(feature) for feature in examples]
    return None if any(v is None for v in versions) else [v for vs in versions for v in vs]


@dataclass
class PartialConfig(FrozenBlocksConfig):
    lr: float = 5e-5
    freeze_below: int | None = None  # layer groups frozen from the bottom; None: all but the top two layers and the head


@register_strategy
class PartialFineTuning(Strategy):
    name = "partial"
    summary = "the bottom k layer groups frozen (--freeze-below k) and computed once, the rest fine-tuned"
    config_class = PartialConfig

    def frozen_groups(self, model: TransferModel) -> int:
        groups = model.layer_groups()
        k = len(groups) - 3 if self.config.freeze_below is None else self.config.freeze_below
        _check_freeze_below(k, len(groups))
        return k

    def prepare(self, model: TransferModel) -> nn.Module:
        trainable = model.layer_groups()[self.frozen_groups(model) :]
        set_trainable(model, lambda name: any(g.owns(name) for g in trainable))
        return model

    def expected_trainable_params(self, model: TransferModel) -> int:
        trainable = model.layer_groups()[self.frozen_groups(model) :]
        return sum(p.numel() for name, p in model.named_parameters() if any(g.owns(name) for g in trainable))

    def fit(self, model: TransferModel, data: FitData, training: TrainingConfig) -> nn.Module:
        prepared = self.prepare(model)
        cache = frozen_layer_cache(model, data, training, self.config, [self.frozen_groups(model)])
        with cache.serving() if cache is not None else nullcontext():
            return train_with_trainer(
                prepared, data, training, lr=self.learning_rate(training), lr_scale=self.lr_scale(model, data, training)
            )


@dataclass
class GradualConfig(FrozenBlocksConfig):
    lr: float = 5e-5
    epochs_per_stage: float = 1.0
    stages: int = 4  # head; + top layer; + top two layers; then everything (ULMFiT's gradual unfreezing)

    def validate(self) -> None:
        super().validate()
        if self.epochs_per_stage <= 0 or self.stages < 2:
            raise UserError(f"gradual unfreezing needs epochs_per_stage > 0 and stages >= 2, got {self.epochs_per_stage}, {self.stages}")


def _trainable_groups(stage: int, stages: int, groups: int) -> int:
    """The head plus the top `stage` layer groups; every group in the last stage."""
    return groups if stage == stages - 1 else stage + 1


class _UnfreezeSchedule(TrainerCallback):
    """At each stage boundary, make the head plus the top `stage` layer groups trainable (all at the last), and
    have the frozen blocks below read the cache when there is one."""

    def __init__(
        self,
        model: nn.Module,
        groups: list,
        stages: int,
        steps_per_stage: int,
        log: list[dict[str, Any]],
        cache: FrozenLayerCache | None,
        serving: ExitStack,
    ):
        self.model, self.groups, self.stages, self.steps_per_stage, self.log = model, groups, stages, steps_per_stage, log
        self.cache, self.serving = cache, serving
        self.stage = -1

    def _apply(self, stage: int, step: int) -> None:
        self.stage = stage
        trainable = self.groups[-_trainable_groups(stage, self.stages, len(self.groups)) :]
        set_trainable(self.model, lambda name: any(g.owns(name) for g in trainable))
        self.log.append({"step": step, "stage": stage + 1, "trainable_groups": [g.name for g in trainable]})
        self.serving.close()  # the previous stage's frozen groups compute again
        frozen = len(self.groups) - len(trainable)
        if self.cache is not None and frozen in self.cache.depths:
            self.serving.enter_context(self.cache.serving(frozen))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._apply(0, 0)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        stage = min(self.stages - 1, state.global_step // self.steps_per_stage)
        if stage != self.stage:
            self._apply(stage, state.global_step)


@register_strategy
class GradualUnfreezing(Strategy):
    name = "gradual"
    summary = "ULMFiT gradual unfreezing: head first, then one more layer group from the top per stage"
    config_class = GradualConfig
    judged_mid_run = False  # its first stage trains the head alone: 0.32 on bbc-news after it, 0.96 at its end

    def prepare(self, model: TransferModel) -> nn.Module:
        # Everything is handed to the optimizer; the schedule freezes by stage (frozen parameters get
        # no gradient, so AdamW leaves them, weight decay included, untouched).
        set_trainable(model, lambda name: True)
        return model

    def expected_trainable_params(self, model: TransferModel) -> int:
        return sum(p.numel() for p in model.parameters())  # by the last stage, everything

    def fit(self, model: TransferModel, data: FitData, training: TrainingConfig) -> nn.Module:
        prepared = self.prepare(model)
        cfg = self.config
        steps_per_stage = max(1, training_plan(data, training, cfg.epochs_per_stage * cfg.stages).steps // cfg.stages)
        groups = model.layer_groups()
        # the frozen blocks of each stage but the last, all pretrained until their stage: one pass caches every depth
        depths = [len(groups) - _trainable_groups(stage, cfg.stages, len(groups)) for stage in range(cfg.stages - 1)]
        cache = frozen_layer_cache(model, data, training, cfg, depths)
        with ExitStack() as serving:
            schedule = _UnfreezeSchedule(prepared, groups, cfg.stages, steps_per_stage, data.log_history, cache, serving)
            trained = train_with_trainer(
                prepared,
                data,
                training,
                lr=self.learning_rate(training),
                lr_scale=self.lr_scale(model, data, training),
                callbacks=[schedule],
                epochs=cfg.epochs_per_stage * cfg.stages,
                stop_early_after=steps_per_stage * (cfg.stages - 1),  # the last stage: the model the schedule trains
            )
        set_trainable(trained, lambda name: True)
        return trained
