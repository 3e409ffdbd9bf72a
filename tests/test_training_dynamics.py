"""What happens inside a training run, watched step by step on the tiny BERT: gradual unfreezing's frozen groups
stay bit-identical, LP-FT's probe leaves the body alone, the learning-rate schedules reach the optimizer as their
formulas say, and early stopping hands back the best evaluated checkpoint rather than the last one.

Every expected value is worked out here from the method's definition (ULMFiT, LP-FT, the Hugging Face schedule
formulas), not read back from the code under test."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from transferlab.backbones import TextPreprocessor, build_classifier, resolve_backbone
from transferlab.settings import TrainingConfig
from transferlab.strategies import get_strategy
from transferlab.training import loop
from transferlab.training.inference import predict_proba
from transferlab.training.loop import FitData, train_with_trainer

from .conftest import sentiment_texts

LABELS = ["negative", "positive"]


def _model(path):
    torch.manual_seed(0)
    return build_classifier(resolve_backbone(str(path)), LABELS, "mean")


def _data(path, n_train, n_val, flip_val=False, seed=0):
    pre = TextPreprocessor.from_pretrained(str(path), 32)
    texts, labels = sentiment_texts(n_train + n_val, seed=seed)
    if flip_val:  # validation labels that disagree with training: learning the task makes validation worse
        labels = labels[:n_train] + [1 - y for y in labels[n_train:]]
    features = pre.encode(texts, labels)
    return FitData(features[:n_train], features[n_train:], pre.collate, LABELS, pre.length_of)


def _group(name: str) -> str:
    """The tiny BERT classifier's parameter -> ULMFiT layer group, from the architecture's names (not the code's
    own `group_of`): the embeddings, one group per encoder block (layer.1 at the bottom), and the new head."""
    if name.startswith("backbone.embeddings."):
        return "embeddings"
    if name.startswith("backbone.encoder.layer."):
        return f"layer.{int(name.split('.')[3]) + 1}"
    assert name.startswith("classifier."), name
    return "head"


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _moved_groups(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {_group(name) for name in before if not torch.equal(before[name], after[name])}


# ---------------------------------------------------------------------------------------------- gradual unfreezing


def test_gradual_unfreezing_leaves_frozen_groups_bit_identical_at_every_stage(tiny_bert_dir, monkeypatch):
    """ULMFiT, 4 stages of 1 epoch: the head alone, then + layer.2, + layer.1, then everything. Between two stage
    boundaries only the unfrozen groups may change, and each of them must change."""
    model = _model(tiny_bert_dir)
    data = _data(tiny_bert_dir, n_train=64, n_val=32)  # 32 < MIN_VALIDATION: validation joins training, no early stop
    after_step: dict[int, dict[str, torch.Tensor]] = {0: _snapshot(model)}
    totals: set[int] = set()

    def hook(step: int, total: int) -> None:  # the loop's own per-step hook, called after each optimizer step
        after_step[step] = _snapshot(model)
        totals.add(total)

    monkeypatch.setattr(loop, "PROGRESS_HOOKS", [hook])
    get_strategy("gradual", lr=1e-3, epochs_per_stage=1, stages=4).fit(
        model, data, TrainingConfig(batch_size=16, min_steps=0, warmup_ratio=0.0)
    )

    per_stage = (64 + 32) // 16  # 96 examples in batches of 16: 6 optimizer steps per one-epoch stage
    assert totals == {4 * per_stage}
    assert sorted(after_step) == list(range(4 * per_stage + 1))
    unfrozen = [{"head"}, {"head", "layer.2"}, {"head", "layer.2", "layer.1"}, {"head", "layer.2", "layer.1", "embeddings"}]
    for stage, trainable in enumerate(unfrozen):
        start, end = after_step[stage * per_stage], after_step[(stage + 1) * per_stage]
        frozen = {"embeddings", "layer.1", "layer.2", "head"} - trainable
        for name in start:
            if _group(name) in frozen:
                assert torch.equal(start[name], end[name]), f"stage {stage + 1}: {name} is frozen but changed"
        assert _moved_groups(start, end) == trainable, f"stage {stage + 1}"


# ------------------------------------------------------------------------------------------------------------ LP-FT


def test_lp_ft_probe_stage_keeps_the_body_and_fine_tuning_moves_it(tiny_bert_dir, monkeypatch):
    """Kumar et al.: the linear probe fits the head on frozen features (body bit-identical to the pretrained one,
    head changed); fine-tuning then starts from that head with every parameter trainable, and the body moves."""
    pretrained = _snapshot(_model(tiny_bert_dir))
    model = _model(tiny_bert_dir)
    data = _data(tiny_bert_dir, n_train=64, n_val=32)
    at_fine_tuning: dict[str, object] = {}
    real_train = train_with_trainer

    def watched(prepared, *args, **kwargs):  # the moment LP-FT hands the probed model to its fine-tuning stage
        at_fine_tuning["weights"] = _snapshot(prepared)
        at_fine_tuning["frozen"] = [name for name, p in prepared.named_parameters() if not p.requires_grad]
        return real_train(prepared, *args, **kwargs)

    monkeypatch.setattr("transferlab.strategies.lpft.train_with_trainer", watched)
    fitted = get_strategy("lp-ft", lr=1e-3).fit(model, data, TrainingConfig(epochs=1, batch_size=16, min_steps=0))

    probed = at_fine_tuning["weights"]
    assert set(probed) == set(pretrained)
    assert _moved_groups(pretrained, probed) == {"head"}  # the probe changed the head and nothing else
    for name in pretrained:
        if _group(name) != "head":
            assert torch.equal(pretrained[name], probed[name]), name
    assert at_fine_tuning["frozen"] == []  # fine-tuning trains everything
    final = _snapshot(fitted)
    assert _moved_groups(probed, final) == {"embeddings", "layer.1", "layer.2", "head"}


def test_lp_ft_probe_is_the_head_strategy_on_the_last_layer_fitted_on_the_training_rows(tiny_bert_dir, monkeypatch):
    """The probe stage's head is exactly what the head strategy (feature extraction, last layer) fits on the training
    examples alone: the validation examples stay held out for early stopping and the temperature."""
    data = _data(tiny_bert_dir, n_train=64, n_val=32)
    reference = get_strategy("head", layers="last").fit(_model(tiny_bert_dir), dataclasses.replace(data, val=[]), TrainingConfig())
    with_validation = get_strategy("head", layers="last").fit(_model(tiny_bert_dir), data, TrainingConfig())
    assert not torch.allclose(reference.classifier.weight, with_validation.classifier.weight)  # the test can tell them apart
    seen = {}

    def stop_after_probe(prepared, *args, **kwargs):
        seen["head"] = prepared.classifier.weight.detach().clone(), prepared.classifier.bias.detach().clone()
        return prepared

    monkeypatch.setattr("transferlab.strategies.lpft.train_with_trainer", stop_after_probe)
    get_strategy("lp-ft").fit(_model(tiny_bert_dir), _data(tiny_bert_dir, n_train=64, n_val=32), TrainingConfig())
    torch.testing.assert_close(seen["head"][0], reference.classifier.weight.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(seen["head"][1], reference.classifier.bias.detach(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- the head's layer mix


@pytest.mark.parametrize("n_val", [40, 0])
def test_the_layer_mix_weighs_the_layer_that_separates_the_classes(tiny_bert_dir, n_val):
    """Synthetic layer states where one layer alone carries the label: the learned mix puts most weight on it, with
    validation examples to judge it by and without any (the training loss judges then)."""
    strategy = get_strategy("head-all-layers")
    model = strategy.prepare(_model(tiny_bert_dir))
    layers = model.layer_mix.weights.numel()
    rng = np.random.default_rng(0)
    y = np.arange(160 + n_val) % 2
    states = rng.normal(size=(len(y), layers, 8))
    signal = layers - 2
    states[:, signal, 0] += 2.0 * (2 * y - 1)
    data = FitData([], [], lambda batch: batch, LABELS)
    weights = strategy._fit_layer_mix(model, states, y, 160, data, TrainingConfig())
    assert weights.argmax() == signal and weights[signal] > 1 / layers + 0.1, weights


# ------------------------------------------------------------------------------------------------------- schedules


class _RecordRates(TrainerCallback):
    """Every parameter group's (base rate, current rate) at the moment the optimizer steps."""

    def __init__(self):
        self.rates: list[list[tuple[float, float]]] = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append([(group["initial_lr"], group["lr"]) for group in optimizer.param_groups])


def _linear(step: int, total: int, warmup: int) -> float:
    """Linear warm-up from 0 to 1 over `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return step / warmup
    return (total - step) / (total - warmup)


def _cosine(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then half a cosine from 1 down to 0 at `total`."""
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def _stlr(step: int, total: int, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """Howard & Ruder 2018, eq. 3: cut = floor(T cut_frac); p rises linearly to 1 at `cut`, then falls linearly to 0
    at T; the multiplier is (1 + p (ratio - 1)) / ratio, from 1/ratio to 1 and back to 1/ratio."""
    cut = math.floor(total * cut_frac)
    if step < cut:
        p = step / cut
    else:
        p = 1 - (step - cut) / (total - cut)  # the paper's cut (1/cut_frac - 1) = T - cut when T cut_frac is whole
    return (1 + p * (ratio - 1)) / ratio


TOTAL_STEPS = 20  # the run below: 20 optimizer steps; 6% warm-up is ceil(1.2) = 2 steps, STLR's cut is 2
WARMUP = 2


MULTIPLIERS = {
    "linear": lambda t: _linear(t, TOTAL_STEPS, WARMUP),
    "cosine": lambda t: _cosine(t, TOTAL_STEPS, WARMUP),
    "stlr": lambda t: _stlr(t, TOTAL_STEPS),
}


@pytest.mark.parametrize("scheduler", list(MULTIPLIERS))
@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_the_schedule_reaches_the_optimizer_at_every_step(tiny_bert_dir, scheduler, layer_decay):
    """The rate each parameter group steps with equals its base rate (lr x eta^depth with discriminative rates) x
    the schedule's multiplier at that step, for all 20 steps."""
    lr = 1e-3
    model = _model(tiny_bert_dir)
    data = _data(tiny_bert_dir, n_train=16, n_val=4)  # validation joins training: 20 examples, batches of 4
    strategy = get_strategy("full", lr=lr, layer_decay=layer_decay)
    cfg = TrainingConfig(batch_size=4, min_steps=TOTAL_STEPS, warmup_ratio=0.06, scheduler=scheduler)
    recorder = _RecordRates()
    train_with_trainer(strategy.prepare(model), data, cfg, lr=lr, lr_scale=strategy.lr_scale(model, data, cfg), callbacks=[recorder])

    assert len(recorder.rates) == TOTAL_STEPS
    # each group's base rate: lr for plain full fine-tuning; lr x 0.5^(groups above it) with eta = 0.5 (head,
    # layer.2, layer.1, embeddings -> 1, 1/2, 1/4, 1/8), split further into decayed and undecayed groups
    depth = {None: [1.0], 0.5: [1.0, 0.5, 0.25, 0.125]}[layer_decay]
    assert sorted({base for base, _ in recorder.rates[0]}) == pytest.approx(sorted(lr * d for d in depth), rel=1e-12)
    for step, groups in enumerate(recorder.rates):
        for base, rate in groups:
            assert rate == pytest.approx(base * MULTIPLIERS[scheduler](step), rel=1e-9, abs=1e-15), f"step {step}"


# -------------------------------------------------------------------------------------------------- early stopping


def test_early_stopping_hands_back_the_best_checkpoint_not_the_last(tiny_bert_dir):
    """Validation labels are the training labels flipped, so the better the model learns the task the worse it scores
    on validation. The model handed back must score what the best evaluation scored (accuracy and loss, recomputed
    here from its predictions), not what the last one did, and training must have stopped `patience` evaluations
    after that best one."""
    model = _model(tiny_bert_dir)
    data = _data(tiny_bert_dir, n_train=160, n_val=60, flip_val=True)  # 60 >= MIN_VALIDATION: early stopping on
    cfg = TrainingConfig(epochs=10, batch_size=16, evals_per_epoch=2, patience=3, min_steps=0)
    fitted = get_strategy("full", lr=1e-3).fit(model, data, cfg)

    evals = [entry for entry in data.log_history if "eval_accuracy" in entry]
    assert len(evals) >= 4
    best = max(range(len(evals)), key=lambda i: (evals[i]["eval_accuracy"], -i))  # the first of the best
    assert evals[-1]["eval_accuracy"] < evals[best]["eval_accuracy"], "the run never got worse: nothing to restore"
    assert len(evals) - 1 - best == cfg.patience  # stopped after 3 evaluations without improvement
    planned = 10 * (160 // 16)
    assert evals[-1]["step"] < planned  # ... before its 100 planned steps

    probs = predict_proba(fitted, data.val, data.collate, data.length_of)
    y = np.array([f["labels"] for f in data.val])
    accuracy = float((probs.argmax(1) == y).mean())
    loss = float(-np.log(probs[np.arange(len(y)), y]).mean())
    assert accuracy == evals[best]["eval_accuracy"]
    assert loss == pytest.approx(evals[best]["eval_loss"], abs=1e-5)
    assert loss != pytest.approx(evals[-1]["eval_loss"], abs=1e-3)


def test_gradual_unfreezing_runs_to_its_last_stage_before_early_stopping_counts(tiny_bert_dir):
    """With the validation labels flipped every evaluation after the first is worse: plain early stopping would end the
    run `patience` evaluations in, in an early stage; gradual unfreezing's last stage still trains."""
    data = _data(tiny_bert_dir, n_train=160, n_val=60, flip_val=True)
    cfg = TrainingConfig(epochs=1, batch_size=16, evals_per_epoch=2, patience=1, min_steps=0)
    get_strategy("gradual", lr=1e-3, stages=4, epochs_per_stage=1.0).fit(_model(tiny_bert_dir), data, cfg)
    stages = [entry["stage"] for entry in data.log_history if "stage" in entry]
    evals = [entry["step"] for entry in data.log_history if "eval_accuracy" in entry]
    assert stages == [1, 2, 3, 4]
    assert len(evals) > 4  # past the two evaluations with patience 1 that plain early stopping allows


# ---------------------------------------------------------------------------------------------- validation batches


def test_validation_batches_pad_to_their_own_length(tiny_bert_dir):
    """Each validation batch is as wide as the longest of its examples once the validation set is sorted by length:
    the widths the model sees in its first evaluation, against widths computed here from the token counts."""
    model = _model(tiny_bert_dir)
    data = _data(tiny_bert_dir, n_train=64, n_val=60)
    cfg = TrainingConfig(epochs=1, batch_size=16, eval_batch_size=8, evals_per_epoch=1, min_steps=0)
    widths: list[int] = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: None if m.training else widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    get_strategy("full", lr=1e-3).fit(model, data, cfg)

    counts = sorted(len(f["input_ids"]) for f in data.val)
    expected = [max(counts[start : start + 8]) for start in range(0, len(counts), 8)]
    assert len(set(counts)) > 3, "sentences of a few lengths: nothing to tell the orders apart"
    assert widths[: len(expected)] == expected


def test_early_stopping_state_survives_a_checkpoint():
    """A resumed run rebuilds early stopping from the checkpoint's record of it: the patience already spent, and the
    step before which it does not count (without which the Trainer could not rebuild it at all)."""
    from transferlab.training.loop import _EarlyStoppingAfter

    callback = _EarlyStoppingAfter(7, early_stopping_patience=3)
    callback.early_stopping_patience_counter = 2
    restored = _EarlyStoppingAfter.from_state(callback.state())
    assert (restored.step, restored.early_stopping_patience, restored.early_stopping_patience_counter) == (7, 3, 2)


@pytest.mark.parametrize("accumulation", [1, 4])
def test_the_divergence_guards_patience_is_five_optimizer_steps(accumulation, tmp_path, tiny_bert_dir):
    """The guard reads each micro-batch's loss: with 4 of them to an optimizer step, its patience is 4 x 5 of them."""
    from transformers import TrainingArguments

    model = build_classifier(resolve_backbone(str(tiny_bert_dir)), ["a", "b"])
    args = TrainingArguments(output_dir=str(tmp_path), gradient_accumulation_steps=accumulation, report_to=[])
    assert loop._Trainer(model=model, args=args).divergence.patience == 5 * accumulation
