"""Training on the Hugging Face Trainer, shared by every strategy (batched inference: inference.py).

The Trainer brings mixed precision, gradient accumulation, accelerate and best-checkpoint
restoring; we give it warm-up with linear or cosine decay, early stopping on the validation
metric, and length-grouped batches padded per batch.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from transferlab import faults
from transferlab.data.sources import is_multi_label
from transferlab.distributed import state
from transferlab.errors import UserError
from transferlab.evaluation.calibration import probabilities, validation_metrics
from transferlab.settings import MIN_VALIDATION, TrainingConfig
from transferlab.training.batch_norm import EVALUATION_BATCH_NORM_EXAMPLES, batch_norm_layers, batch_norm_sample, recompute_batch_norm
from transferlab.training.checkpoints import last_complete_checkpoint, shared_temporary_folder, tensorboard_callbacks
from transferlab.training.divergence import DivergenceGuard
from transferlab.training.inference import precision_flags, precision_in_use, predict_logits

# Called with (step, total_steps) while training; the CLI hangs a progress bar here.
PROGRESS_HOOKS: list[Callable[[int, int], None]] = []


class _ProgressCallback(TrainerCallback):
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for hook in PROGRESS_HOOKS:
            hook(state.global_step, state.max_steps)
        faults.reached("train-step")


@dataclass
class FitData:
    """Encoded examples (one feature dict each, with `labels`) and how to batch them."""

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
    label_names: list[str]
    length_of: Callable[[dict[str, Any]], int] = field(default=lambda feature: 1)
    # A run folder's job folder: full checkpoints, kept until the run is recorded, so a kill can resume.
    # None: a temporary folder, removed at the end.
    workdir: Path | None = None
    class_weights: np.ndarray | None = None  # per-class loss weights, or None for plain cross-entropy
    train_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # random augmentation, training batches only
    # Every version train_transform can make of an example, or None from it when they are unbounded (crops).
    train_variants: Callable[[dict[str, Any]], list[dict[str, Any]] | None] | None = None
    # The pretrained backbone's pooled features of train + val in that order, by feature layer ("last",
    # "second_to_last"), when the data checks computed them: the head then fits on these instead of running the
    # backbone again.
    frozen_features: dict[str, np.ndarray] | None = None
    # A group per row of train + val (in that order): rows of one group are copies of one example (oversampled,
    # augmented, or duplicated in the data), and a cross-validation over them keeps each group in one fold. None:
    # every row is its own example.
    groups: np.ndarray | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    # A term added to each training step's loss (EWC, L2-SP, replay: evaluation/forgetting.py), or None.
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None
    mixup_alpha: float | None = None  # images: blend pairs of each training batch, Beta(alpha, alpha) weights
    max_tokens: int | None = None  # text: inputs are cut to this many tokens (the preprocessor's max_length)
    # A strategy that fits on the validation examples too (the head) leaves their out-of-fold logits here: the run
    # chooses the calibration temperature and the decision threshold from these, not from in-sample predictions.
    validation_logits: np.ndarray | None = None
    # Called with each validation pass's metrics (eval_accuracy, ...); True stops the training there, at the best
    # checkpoint so far. A search prunes trials that fall behind through it.
    on_evaluate: Callable[[dict[str, float]], bool] | None = None


def validation_logits(model: nn.Module, data: FitData, batch_size: int = 64) -> np.ndarray:
    """`model`'s logits on the validation examples, for the temperature and the decision threshold: the out-of-fold ones
    a strategy that fits on those examples too left on `data`, else computed once and kept there."""
    if data.validation_logits is None:
        data.validation_logits = predict_logits(model, data.val, data.collate, data.length_of, batch_size)
    return data.validation_logits


class _EvaluationHook(TrainerCallback):
    def __init__(self, hook: Callable[[dict[str, float]], bool]):
        self.hook = hook

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self.hook(metrics or {}):
            control.should_training_stop = True


class _EarlyStoppingAfter(EarlyStoppingCallback):
    """transformers' early stopping, blind to the evaluations up to step `step`; the best checkpoint is still chosen
    over all of them."""

    def __init__(self, step: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.step = step

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float], **kwargs: Any) -> None:
        if state.global_step > self.step:
            super().on_evaluate(args, state, control, metrics, **kwargs)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (the patience spent, and `step`), so that a resumed run stops where the
        uninterrupted one would (the Trainer rebuilds it from these with `restore_callback_states_from_checkpoint`)."""
        saved = super().state()
        saved["args"]["step"] = self.step
        return saved


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[dict[str, Any]], transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index] if self.transform is None else self.transform(self.items[index])


def slanted_triangular(step: int, total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """ULMFiT's slanted triangular learning-rate multiplier (Howard & Ruder 2018, eq. 3).

    A short linear rise over `cut_frac` of the steps, then a long linear decay; the lowest rate is
    1/ratio of the highest. Written by hand: neither transformers nor torch ships this schedule. The decay runs
    over the `total_steps - cut` steps left, which the paper writes cut (1/cut_frac - 1): the same where
    total_steps x cut_frac is whole, and otherwise the paper's reaches the floor before the last step and stays.
    """
    cut = max(1, int(total_steps * cut_frac))
    p = step / cut if step < cut else 1 - (step - cut) / max(1, total_steps - cut)
    return (1 + max(p, 0.0) * (ratio - 1)) / ratio


class _EpochSeededLengthSampler(LengthGroupedSampler):
    """transformers' length-grouped order, drawn from seed + epoch. The stock sampler draws from the global RNG,
    which a run resumed in a later epoch does not bring back to where that epoch began: its order, and so its
    metrics, would differ from the uninterrupted run's."""

    def __init__(self, sampler: LengthGroupedSampler, seed: int):
        super().__init__(sampler.batch_size, lengths=sampler.lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class _Trainer(Trainer):
    """The Trainer with per-parameter learning-rate scales and the slanted triangular schedule."""

    def __init__(
        self,
        *args: Any,
        lr_scale: Callable[[str], float] | None = None,
        schedule: str = "linear",
        class_weights: np.ndarray | None = None,
        regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
        mixup: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        before_evaluation: Callable[[], None] | None = None,
        guess_loss: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        # Our classifiers return a per-batch mean loss and ignore `num_items_in_batch`, whatever their
        # forward's **kwargs suggest: the Trainer must not multiply the loss by the process count (meant
        # for losses summed over the global batch) nor skip dividing it over gradient-accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.lr_scale = lr_scale
        # It reads every micro-batch's loss: its patience, in optimizer steps, counts as many micro-batches as one takes.
        self.divergence = DivergenceGuard(floor=guess_loss, patience=DivergenceGuard.patience * self.args.gradient_accumulation_steps)
        self.schedule = schedule
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.regularizer = regularizer
        self.mixup = mixup
        self.before_evaluation = before_evaluation

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        if self.before_evaluation is not None:
            self.before_evaluation()
        return super().evaluate(*args, **kwargs)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any):
        result = self._task_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        if self.regularizer is None or not model.training:
            return result
        if return_outputs:
            return result[0] + self.regularizer(model), result[1]
        return result + self.regularizer(model)

    def _task_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any):
        if self.mixup is not None and model.training and len(inputs["labels"]) % 2 == 0:  # timm pairs a batch's halves
            inputs = dict(inputs)
            pixels, soft_labels = self.mixup(inputs.pop("pixel_values"), inputs.pop("labels"))
            outputs = model(pixel_values=pixels, **inputs)
            # timm's SoftTargetCrossEntropy, which takes no class weights: torch's, on the mixed targets, does
            weight = None if self.class_weights is None else self.class_weights.to(soft_labels.device)
            loss = nn.functional.cross_entropy(outputs.logits.float(), soft_labels, weight=weight)
        elif self.class_weights is None:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        else:
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = nn.functional.cross_entropy(outputs.logits.float(), labels, weight=self.class_weights.to(labels.device))
        if model.training:
            self.divergence.check(loss.item(), self.state.global_step + 1)
        return (loss, outputs) if return_outputs else loss

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        """In order: the validation set comes sorted by length, so each batch pads to about its own length. When training
        groups by length the stock sampler groups evaluation too, but in random runs of batches, and below 4 batches'
        worth of examples in single random batches, each padded to its longest member (200 sentences of minilm-l6:
        1.1 s a pass, 0.65 s in order)."""
        # Several processes: None, the stock ungrouped choice (accelerate shards the batches in order).
        return torch.utils.data.SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        sampler = super()._get_train_sampler(train_dataset)
        return _EpochSeededLengthSampler(sampler, self.args.data_seed) if isinstance(sampler, LengthGroupedSampler) else sampler

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.lr_scale is None or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups.setdefault((name in decay, self.lr_scale(name)), []).append(p)
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(
            [
                {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0, "lr": self.args.learning_rate * scale}
                for (decays, scale), params in groups.items()
            ],
            **kwargs,
        )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.schedule != "stlr" or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer or self.optimizer, lambda step: slanted_triangular(step, num_training_steps)
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler


def steps_per_epoch(examples: int, cfg: TrainingConfig) -> int:
    """Optimizer steps in one pass over `examples`, counted as the Trainer counts them: it drops no partial batch, and
    a partial window of gradient accumulation still steps (at least one step)."""
    return max(1, math.ceil(math.ceil(examples / cfg.batch_size) / cfg.gradient_accumulation))


@dataclass
class TrainingPlan:
    """What one call of the Trainer trains on, for how many optimizer steps, and whether it stops early."""

    train: list[dict[str, Any]]
    steps: int
    max_steps: int  # the Trainer's max_steps: -1 when the epochs decide
    eval_every: int
    early_stopping: bool


def training_plan(data: FitData, cfg: TrainingConfig, epochs: float | None = None) -> TrainingPlan:
    """The epochs' worth of steps, or `cfg.min_steps` when that is more; a validation set of a handful of
    examples picks checkpoints by noise, so below MIN_VALIDATION it joins the training examples and the run
    trains its whole budget and keeps the last weights."""
    epochs = epochs or cfg.epochs
    early_stopping = len(data.val) >= MIN_VALIDATION
    train = data.train if early_stopping else [*data.train, *data.val]
    per_epoch = steps_per_epoch(len(train), cfg)
    by_epochs = math.ceil(epochs * per_epoch)
    if cfg.min_steps <= by_epochs:
        return TrainingPlan(train, by_epochs, -1, max(1, per_epoch // cfg.evals_per_epoch), early_stopping)
    evaluations = max(1, round(epochs * cfg.evals_per_epoch))
    return TrainingPlan(train, cfg.min_steps, cfg.min_steps, max(1, cfg.min_steps // evaluations), early_stopping)


def _uniform_guess_loss(data: FitData) -> float:
    """The training loss of predicting every class (or, multi-label, every label) as equally likely; 0 for examples
    without class labels (a language-model objective)."""
    if not data.train or "labels" not in data.train[0] or not data.label_names:
        return 0.0
    multi = is_multi_label(np.asarray([data.train[0]["labels"]]))
    return math.log(2) if multi else math.log(len(data.label_names))


def _fp32_batch_norm(model: nn.Module, examples: Sequence[dict[str, Any]], data: FitData, cfg: TrainingConfig) -> Callable[[], None] | None:
    """Under mixed precision, recomputing in fp32 the running statistics of the BatchNorm layers training updates,
    from a sample of the training examples as evaluation sees them (no augmentation); None where training computes
    in fp32 or updates no BatchNorm. Training itself reads each batch's own statistics and is unchanged."""
    if precision_in_use(cfg.precision) == "fp32":
        return None
    model.train()
    layers = [layer for layer in batch_norm_layers(model) if layer.training]
    if not layers:
        return None
    sample = batch_norm_sample(examples, cfg.seed, EVALUATION_BATCH_NORM_EXAMPLES)
    return lambda: recompute_batch_norm(model, layers, sample, data.collate, cfg.batch_size)


def train_with_trainer(
    model: nn.Module,
    data: FitData,
    cfg: TrainingConfig,
    lr: float,
    lr_scale: Callable[[str], float] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    epochs: float | None = None,
    stop_early_after: int = 0,
) -> nn.Module:
    """Train the parameters that require grad; return the model at its best validation checkpoint.

    `lr_scale(parameter_name)` multiplies the learning rate per parameter (discriminative rates);
    `callbacks` see every step (gradual unfreezing); `epochs` overrides the run's epoch count;
    early stopping counts the evaluations after step `stop_early_after` (a staged schedule runs to its last stage).
    """
    epochs = epochs or cfg.epochs
    plan = training_plan(data, cfg, epochs)
    eval_every = plan.eval_every
    if not plan.early_stopping and data.val:
        data.log_history.append({"early_stopping": f"off: {len(data.val)} validation examples joined training; {plan.steps} steps"})
    processes = state().num_processes
    if cfg.batch_size % processes or cfg.eval_batch_size % processes:
        raise UserError(f"the batch sizes ({cfg.batch_size}, eval {cfg.eval_batch_size}) must be multiples of the {processes} processes")
    # In a run folder, checkpoints carry the optimizer, scheduler and RNG states too, so an interrupted
    # run resumes from its last one exactly; without a folder they only serve best-model restoring.
    resumable = data.workdir is not None
    workdir = Path(data.workdir) if resumable else shared_temporary_folder()
    checkpoints = workdir / "checkpoints"
    metric = cfg.headline_metric

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        labels = np.asarray(prediction.label_ids)
        multi = is_multi_label(labels)  # multi-label targets: a 0/1 float per label
        probs = probabilities(np.asarray(logits, dtype=np.float32), multi_label=multi)
        return validation_metrics(labels.astype(np.int64) if multi else labels, probs, len(data.label_names), metric)

    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=epochs,
        max_steps=plan.max_steps,
        # Under `accelerate launch` each step's batch is split over the processes, so the batch size
        # stays the global one and several processes take the same steps as one (up to float noise).
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        accelerator_config={"split_batches": True},
        gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps (transformers 5)
        lr_scheduler_type="constant" if cfg.scheduler == "stlr" else cfg.scheduler,
        eval_strategy="steps" if plan.early_stopping else "no",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=1,
        save_only_model=not resumable,
        load_best_model_at_end=plan.early_stopping,
        restore_callback_states_from_checkpoint=True,  # early stopping's patience: see _EarlyStoppingAfter.state
        metric_for_best_model=metric,
        greater_is_better=True,
        logging_steps=max(1, eval_every // 2),
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length" if "input_ids" in plan.train[0] else "random",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        **precision_flags(cfg.precision),
    )
    recompute_statistics = _fp32_batch_norm(model, plan.train, data, cfg)
    trainer = _Trainer(
        model=model,
        lr_scale=lr_scale,
        schedule=cfg.scheduler,
        class_weights=data.class_weights,
        regularizer=data.regularizer,
        mixup=_mixup(data),
        before_evaluation=recompute_statistics,
        guess_loss=_uniform_guess_loss(data),
        args=args,
        train_dataset=_ListDataset(plan.train, data.train_transform),
        # Shortest first, so that each validation batch pads to about its own length (batched in order:
        # _get_eval_sampler); order does not change the metrics.
        eval_dataset=_ListDataset(sorted(data.val, key=data.length_of)),
        data_collator=data.collate,
        compute_metrics=compute_metrics,
        callbacks=[
            *([_EarlyStoppingAfter(stop_early_after, early_stopping_patience=cfg.patience)] if plan.early_stopping else []),
            _ProgressCallback(),
            *tensorboard_callbacks(data.workdir),
            *([_EvaluationHook(data.on_evaluate)] if data.on_evaluate is not None else []),
            *callbacks,
        ],
    )
    trainer.remove_callback(PrinterCallback)  # our log history and progress bar replace its prints
    try:
        trainer.train(resume_from_checkpoint=last_complete_checkpoint(checkpoints) if resumable else None)
        trainer.accelerator.wait_for_everyone()  # every process has loaded the best checkpoint before it goes
    finally:
        data.log_history.extend(trainer.state.log_history)
        if not resumable and trainer.is_world_process_zero():  # a run folder removes them once the run is recorded
            shutil.rmtree(workdir, ignore_errors=True)
    if recompute_statistics is not None and trainer.state.best_model_checkpoint is None:
        recompute_statistics()  # a restored best checkpoint holds the statistics its evaluation recomputed
    # Under mixed precision accelerate leaves an autocast wrapper on forward; evaluation and export
    # must see the fp32 model, or in-memory and exported predictions differ (seen on a GPU: 3e-4).
    return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)


def _mixup(data: FitData):
    """timm's Mixup for the run's classes: batch mode, no CutMix, no label smoothing; None when not asked for."""
    if data.mixup_alpha is None:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=data.mixup_alpha, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=len(data.label_names))
