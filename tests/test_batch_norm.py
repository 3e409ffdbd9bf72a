"""BatchNorm statistics recomputed in fp32 (training/batch_norm.py): after mixed-precision training, what evaluation
reads must be the statistics an fp32 pass over the training images gives, and fp32 training must be left as it was."""

from __future__ import annotations

import copy

import pytest
import torch

from transferlab.backbones import build_classifier, load_preprocessor, resolve_backbone
from transferlab.settings import TrainingConfig
from transferlab.strategies import get_strategy
from transferlab.training.batch_norm import EVALUATION_BATCH_NORM_EXAMPLES, batch_norm_layers, batch_norm_sample, recompute_batch_norm
from transferlab.training.loop import FitData

from .conftest import bright_side_images


@pytest.fixture
def cnn(tiny_cnn_dir):
    """A fresh tiny CNN (BatchNorm in every stage, pretrained statistics of a random network), its preprocessing,
    and 120 small images."""
    asset = resolve_backbone(str(tiny_cnn_dir))
    pre = load_preprocessor(asset, image_size=32, augment=["flip"])
    images, labels = bright_side_images(120, seed=1)
    torch.manual_seed(0)
    return build_classifier(asset, ["dark", "bright"], "auto"), pre, pre.encode(images, labels)


def _input_statistics(model, features, collate, autocast: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each BatchNorm layer's input mean and unbiased variance per channel over one batch of `features`, the network
    in training mode (as a recomputation runs it) on a copy: computed with plain torch, apart from the code tested."""
    twin = copy.deepcopy(model).train()
    seen: list[torch.Tensor] = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].float())) for layer in batch_norm_layers(twin)]
    batch = collate([{"pixel_values": f["pixel_values"]} for f in features])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        twin(**batch)
    for hook in hooks:
        hook.remove()
    return [(x.mean((0, 2, 3)), x.transpose(0, 1).flatten(1).var(1)) for x in seen]


def test_statistics_are_the_fp32_ones_even_inside_a_mixed_precision_wrapper(cnn):
    """accelerate wraps a mixed-precision model's forward in autocast (the plain one kept as `_original_forward`); the
    recomputation must see through it. The bf16 statistics differ from the fp32 ones by more than the tolerance, so a
    recomputation under the wrapper would fail here."""
    model, pre, features = cnn
    expected = _input_statistics(model, features[:32], pre.collate, autocast=False)
    rounded = _input_statistics(model, features[:32], pre.collate, autocast=True)
    plain = model.forward

    def under_autocast(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return plain(*args, **kwargs)

    model._original_forward, model.forward = plain, under_autocast
    recompute_batch_norm(model, batch_norm_layers(model), features[:32], pre.collate, batch_size=32)  # one batch
    assert len(expected) == len(batch_norm_layers(model)) > 5
    for layer, (mean, var) in zip(batch_norm_layers(model), expected):
        torch.testing.assert_close(layer.running_mean, mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.running_var, var, atol=1e-5, rtol=1e-4)
    assert max((m - r).abs().max().item() for (m, _), (r, _) in zip(expected, rounded)) > 1e-3
    assert model.forward is under_autocast  # the wrapper is back for training


class _Stop(Exception):
    pass


def test_only_the_layers_the_pass_reaches_change_and_modes_and_momenta_come_back(cnn):
    """A pass stopped after the first stage resets that stage's layers and no others (a cache serves the rest without
    running them); a module pinned in eval mode and the layers' momenta are as before."""
    model, pre, features = cnn
    model.train()
    reached_stage = model.prefix_units(1)
    first = {id(m) for unit in reached_stage for m in batch_norm_layers(unit)}
    layers = batch_norm_layers(model)
    before = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]
    layers[-1].momentum, layers[-1].training = 0.3, False
    modes = [m.training for m in model.modules()]
    stop = reached_stage[-1].register_forward_hook(lambda *_: (_ for _ in ()).throw(_Stop()))

    def run(batch):
        try:
            model(**batch)
        except _Stop:
            pass

    recompute_batch_norm(model, layers, features, pre.collate, batch_size=16, run=run)
    stop.remove()
    assert first and len(first) < len(layers)
    for layer, (mean, var) in zip(layers, before):
        changed = not torch.equal(layer.running_mean, mean) and not torch.equal(layer.running_var, var)
        assert changed == (id(layer) in first)
    assert [m.training for m in model.modules()] == modes
    assert layers[-1].momentum == 0.3 and all(layer.momentum == 0.1 for layer in layers[:-1])


def _fit(model, pre, features, precision):
    data = FitData(features[:60], features[60:120], pre.collate, ["dark", "bright"], train_transform=pre.train_transform)
    cfg = TrainingConfig(epochs=1, lr=3e-3, seed=0, batch_size=10, min_steps=20, precision=precision)
    return get_strategy("full").fit(model, data, cfg), data, cfg


def _recomputed_elsewhere(model, data, cfg) -> bool:
    """Whether the trained model's running statistics are those a fresh fp32 recomputation over the training sample
    gives (a best checkpoint restored after training must hold them too)."""
    trained = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in batch_norm_layers(model)]
    sample = batch_norm_sample(data.train, cfg.seed, EVALUATION_BATCH_NORM_EXAMPLES)
    recompute_batch_norm(model, batch_norm_layers(model), sample, data.collate, cfg.batch_size)
    return all(
        torch.allclose(layer.running_mean, mean, atol=1e-6) and torch.allclose(layer.running_var, var, atol=1e-6)
        for layer, (mean, var) in zip(batch_norm_layers(model), trained)
    )


def test_bf16_training_leaves_fp32_statistics_and_fp32_training_its_own(monkeypatch, cnn):
    """Under bf16 autocast (emulated where the CPU lacks it) with 60 validation images: early stopping evaluates, and
    the best checkpoint restored at the end holds the statistics recomputed before its evaluation. In fp32 the
    running averages of training are kept."""
    monkeypatch.setattr("transferlab.training.inference.cpu_has_bf16", lambda: True)
    model, pre, features = cnn
    fp32_start = copy.deepcopy(model)
    trained, data, cfg = _fit(model, pre, features, "bf16")
    assert any("eval_loss" in entry for entry in data.log_history)
    assert _recomputed_elsewhere(trained, data, cfg)
    trained, data, cfg = _fit(fp32_start, pre, features, "fp32")
    assert not _recomputed_elsewhere(trained, data, cfg)
