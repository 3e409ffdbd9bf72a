"""The frozen-layer cache of partial fine-tuning and gradual unfreezing (training/frozen_cache.py): the cached model
must give the logits the full model gives, whatever the padding of the batch, and leave the model as it found it.
Depths count layer groups: a text model's first group is its embeddings, so 2 groups are the embeddings and one
block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferlab.backbones import ImagePreprocessor, TextPreprocessor, build_classifier, load_preprocessor, resolve_backbone
from transferlab.backbones.vision import VisionClassifier, VisionConfig
from transferlab.settings import TrainingConfig
from transferlab.strategies import get_strategy
from transferlab.training.frozen_cache import FrozenLayerCache
from transferlab.training.inference import predict_proba
from transferlab.training.loop import FitData

from .conftest import bright_side_images, sentiment_texts, tiny_bert, tiny_cnn, tiny_distilbert, tiny_llama


@pytest.fixture(scope="module", params=["bert", "distilbert", "llama"])
def family(request, tmp_path_factory):
    build = {"bert": tiny_bert, "distilbert": tiny_distilbert, "llama": tiny_llama}[request.param]
    path = build(tmp_path_factory.mktemp(request.param))
    pre = TextPreprocessor.from_pretrained(str(path), 32)
    texts, labels = sentiment_texts(40)
    torch.manual_seed(0)
    model = build_classifier(resolve_backbone(str(path)), ["neg", "pos"], "auto").eval()
    return model, pre, pre.encode(texts, labels)


@pytest.mark.parametrize("frozen_groups", [2, 3])
def test_cached_model_gives_the_full_models_probabilities(family, frozen_groups):
    model, pre, features = family
    full = predict_proba(model, features, pre.collate, pre.length_of, batch_size=8)
    cache = FrozenLayerCache(model, frozen_groups).fill(features, pre.collate, pre.length_of, batch_size=16)
    assert len(cache.rows) == len({tuple(f["input_ids"]) for f in features})
    with cache.serving():
        # batches of 5 in input order: each example sits beside other neighbours, with other padding, than when cached
        cached = torch.cat([torch.softmax(model(**pre.collate(features[i : i + 5])).logits, -1) for i in range(0, 40, 5)])
    torch.testing.assert_close(cached.detach(), torch.as_tensor(full), atol=1e-5, rtol=0)
    assert all("forward" not in block.__dict__ for block in model.layer_stack())  # the model is whole again
    torch.testing.assert_close(torch.as_tensor(predict_proba(model, features, pre.collate, pre.length_of, 8)), torch.as_tensor(full))


def test_an_example_outside_the_cache_is_an_error(family):
    model, pre, features = family
    cache = FrozenLayerCache(model, 2).fill(features[:10], pre.collate, pre.length_of, batch_size=16)
    with cache.serving(), pytest.raises(RuntimeError, match="outside the frozen-layer cache"):
        model(**pre.collate(features[10:12]))


# The strategies that freeze blocks, with settings that leave the tiny BERT's (2 blocks) bottom block frozen in
# partial fine-tuning, and in gradual unfreezing both blocks in stage 1 and the bottom one in stage 2 of 3.
FREEZING = {"partial": {"freeze_below": 2}, "gradual": {"stages": 3}}
CACHED_DEPTHS = {"partial": [2], "gradual": [2, 3]}


def _fit(tmp_path, strategy, precision="fp32", **options):
    """`strategy` on a tiny BERT without dropout in its blocks: the frozen blocks then compute the same output with
    or without the cache. Also returns, per batch the bottom block computed, whether it ran under autocast."""
    path = tiny_bert(tmp_path / "bert", dropout=0.0)
    pre = TextPreprocessor.from_pretrained(str(path), 32)
    texts, labels = sentiment_texts(400, seed=1)
    features = pre.encode(texts, labels)
    torch.manual_seed(0)
    model = build_classifier(resolve_backbone(str(path)), ["neg", "pos"], "mean")
    data = FitData(features[:300], features[300:340], pre.collate, ["neg", "pos"], length_of=pre.length_of)
    computed = []  # per batch the bottom block computed: whether it ran under autocast
    next(model.layer_stack()[0].children()).register_forward_hook(lambda *_: computed.append(torch.is_autocast_enabled("cpu")))
    training = TrainingConfig(epochs=3, lr=3e-3, seed=0, precision=precision)
    trained = get_strategy(strategy, **FREEZING[strategy], **options).fit(model, data, training)
    cache_log = [e["frozen_layer_cache"] for e in data.log_history if "frozen_layer_cache" in e]
    probs = predict_proba(trained, features[340:], pre.collate, pre.length_of)
    return probs, (probs.argmax(1) == labels[340:]).mean(), cache_log, trained, computed


@pytest.mark.parametrize("strategy", sorted(FREEZING))
def test_training_on_the_cache_trains_as_without_it(tmp_path, strategy):
    """Without dropout in the frozen blocks the cache changes nothing but the time: the same steps, the same model."""
    cached, accuracy, [entry], trained, cached_batches = _fit(tmp_path / "cached", strategy)
    computed, _, no_entry, _, computed_batches = _fit(tmp_path / "computed", strategy, cache_frozen=False)
    assert len(cached_batches) < len(computed_batches)  # the frozen block read the cache instead of computing
    assert entry["groups"] == CACHED_DEPTHS[strategy]
    assert entry["examples"] == len(set(sentiment_texts(400, seed=1)[0][:340]))  # one row per distinct sentence
    assert no_entry == [] and all("forward" not in block.__dict__ for block in trained.layer_stack())
    assert accuracy >= 0.7  # it learned the task
    torch.testing.assert_close(torch.as_tensor(cached), torch.as_tensor(computed), atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", sorted(FREEZING))
def test_under_bf16_the_cache_is_filled_as_training_computes(monkeypatch, tmp_path, strategy):
    """Training steps under bf16 autocast (emulated where the CPU lacks it): the one pass filling the cache runs
    under it too, and the model trains as the one computing its frozen blocks at every step, to bf16 rounding."""
    monkeypatch.setattr("transferlab.training.inference.cpu_has_bf16", lambda: True)
    cached, accuracy, [entry], _, cached_batches = _fit(tmp_path / "cached", strategy, precision="bf16")
    computed, _, _, _, computed_batches = _fit(tmp_path / "computed", strategy, precision="bf16", cache_frozen=False)
    assert isinstance(entry, dict) and accuracy >= 0.7
    # first the checks that the network flows through the cut and of the cache's size (a few batches, fp32), then
    # the fill: the 340 training and validation sentences in batches of 16, under autocast
    checks = cached_batches.index(True)
    assert checks <= 3 and all(cached_batches[checks : checks + -(-340 // 16)])
    assert sum(computed_batches) > 0  # the computed run's training steps ran under autocast as well
    torch.testing.assert_close(torch.as_tensor(cached), torch.as_tensor(computed), atol=0.05, rtol=0)


@pytest.mark.parametrize("strategy", sorted(FREEZING))
def test_a_cache_over_its_limit_is_skipped(tmp_path, strategy):
    _, _, [entry], *_ = _fit(tmp_path, strategy, cache_limit_mb=1e-6)
    assert entry.startswith("off:") and "cache_limit_mb" in entry


def test_one_pass_caches_every_depth(family):
    """The output after 1 and after 2 blocks, from one pass: each serves the model as a cache of that depth alone."""
    model, pre, features = family
    full = predict_proba(model, features, pre.collate, pre.length_of, batch_size=8)
    both = FrozenLayerCache(model, [3, 2]).fill(features, pre.collate, pre.length_of, batch_size=16)
    assert both.depths == [2, 3]
    for depth in (2, 3):
        with both.serving(depth):
            cached = predict_proba(model, features, pre.collate, pre.length_of, batch_size=5)
        torch.testing.assert_close(torch.as_tensor(cached), torch.as_tensor(full), atol=1e-5, rtol=0)
        alone = FrozenLayerCache(model, depth).fill(features, pre.collate, pre.length_of, batch_size=16)
        assert all(torch.equal(alone.rows[key], both.states[depth][key]) for key in alone.rows)
    with pytest.raises(ValueError, match="no cached output after 4 layer groups"):
        with both.serving(4):
            pass


# ------------------------------------------------------------------ CNNs: stages, BatchNorm and flips


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """A tiny CNN with BatchNorm in every stage, its preprocessing with flips, and 24 small images."""
    path = tiny_cnn(tmp_path_factory.mktemp("cnn"))
    asset = resolve_backbone(str(path))
    pre = load_preprocessor(asset, image_size=32, augment=["flip"])
    images, labels = bright_side_images(24)
    torch.manual_seed(0)
    return build_classifier(asset, ["dark", "bright"], "auto").eval(), pre, pre.encode(images, labels)


@pytest.mark.parametrize("frozen_groups", [1, 3])
def test_a_cnns_cached_model_gives_the_full_models_probabilities_for_each_flip(cnn, frozen_groups):
    model, pre, features = cnn
    versions = [v for f in features for v in pre.train_variants(f)]
    assert len(versions) == 2 * len(features) and not torch.equal(versions[0]["pixel_values"], versions[1]["pixel_values"])
    full = predict_proba(model, versions, pre.collate, batch_size=7)
    cache = FrozenLayerCache(model, frozen_groups).fill(versions, pre.collate, pre.length_of, batch_size=16)
    assert len(cache.rows) == len(versions)
    with cache.serving():
        cached = predict_proba(model, versions, pre.collate, batch_size=5)
    torch.testing.assert_close(torch.as_tensor(cached), torch.as_tensor(full), atol=1e-5, rtol=0)
    assert cache.largest_difference(versions[:8], pre.collate) < 1e-5
    assert all("forward" not in unit.__dict__ for unit in model.prefix_units(frozen_groups))


def test_batch_norm_statistics_are_re_estimated_on_the_frozen_stages_only(cnn):
    """AdaBN: a frozen BatchNorm's running mean becomes the mean of its input over the images; the stages above keep
    theirs."""
    model, pre, features = cnn
    frozen, above = model.prefix_units(1), model.prefix_units(len(model.layer_groups()) - 1)[-1]
    norm = next(m for unit in frozen for m in unit.modules() if isinstance(m, nn.BatchNorm2d))
    inputs = []
    hook = norm.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    with torch.no_grad():
        model(**pre.collate([{"pixel_values": f["pixel_values"]} for f in features]))
    hook.remove()
    before_above = {k: v.clone() for k, v in above.state_dict().items()}
    FrozenLayerCache(model, 1).refresh_batch_norm(features, pre.collate, batch_size=8)  # equal batches: a mean of means
    torch.testing.assert_close(norm.running_mean, inputs[0].mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert all(torch.equal(v, before_above[k]) for k, v in above.state_dict().items())


def test_a_cut_the_network_does_not_flow_through_is_found():
    """A backbone whose output also reads its stem's: served from a cache after its second module, the skipped stem
    passes the pixels on, and the logits change."""

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.body = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.stem(x)
            return (self.body(y) + y.mean(1, keepdim=True)).mean((2, 3))

    torch.manual_seed(0)
    model = VisionClassifier(Skip(), nn.Linear(4, 2), VisionConfig("torchvision", "skip")).eval()
    features = [{"pixel_values": torch.randint(0, 255, (3, 8, 8), dtype=torch.uint8)} for _ in range(6)]
    pre = ImagePreprocessor((0.5,) * 3, (0.5,) * 3, size=8)
    assert [len(model.prefix_units(k)) for k in (1, 2)] == [1, 2]
    flows = FrozenLayerCache(model, 1).fill(features, pre.collate, pre.length_of, batch_size=4)
    assert flows.largest_difference(features, pre.collate) < 1e-6
    cut = FrozenLayerCache(model, 2).fill(features, pre.collate, pre.length_of, batch_size=4)
    assert cut.largest_difference(features, pre.collate) > 1e-3


# What the cache itself computes, in batches of 10: 24 to fill (each of 120 images and its mirror image), 10 to
# re-estimate BatchNorm on the 100 training images, and up to 6 for its checks.
CACHE_BATCHES = 40


def _fit_images(tmp_path, augment, strategy="partial", before=None, **options):
    """`strategy` on the tiny CNN from the same start; `before(model, data)` may change the model first. Returns the
    cache's log entry (or None), the test probabilities, how many batches a frozen block computed, and the model."""
    path = tiny_cnn(tmp_path / "cnn")
    asset = resolve_backbone(str(path))
    pre = load_preprocessor(asset, image_size=32, augment=augment)
    images, labels = bright_side_images(160, seed=1)
    features = pre.encode(images, labels)
    torch.manual_seed(0)
    model = build_classifier(asset, ["dark", "bright"], "auto")
    data = FitData(
        features[:100],
        features[100:120],
        pre.collate,
        ["dark", "bright"],
        train_transform=pre.train_transform,
        train_variants=pre.train_variants,
        mixup_alpha=0.2 if "mixup" in augment else None,
    )
    if before is not None:
        before(model, data)
    computed = []  # counted inside a block: a served block's own hooks still run
    block = next(unit for unit in model.prefix_units(3) if any(True for _ in unit.children()))
    next(block.children()).register_forward_hook(lambda *_: computed.append(1))
    settings = {"freeze_below": 3} if strategy == "partial" else {"stages": 3}
    # fp32, where the cache is exact: under bf16 the BatchNorm statistics recomputed at the end read the cached frozen
    # output, rounded as training computed it, where the network without the cache computes it in fp32
    training = TrainingConfig(epochs=3, lr=3e-3, seed=0, batch_size=10, precision="fp32")
    trained = get_strategy(strategy, **settings, **options).fit(model, data, training)
    entries = [e["frozen_layer_cache"] for e in data.log_history if "frozen_layer_cache" in e]
    return (entries or [None])[0], predict_proba(trained, features[120:], pre.collate), len(computed), trained


def _frozen_stages_in_eval_mode(model, data):
    """What the cache computes, without it: the bottom 3 groups' BatchNorm statistics re-estimated on the training
    images, then those groups kept in eval mode whatever the Trainer asks."""
    FrozenLayerCache(model, 3).refresh_batch_norm(data.train, data.collate, batch_size=10)
    for unit in model.prefix_units(3):
        for module in unit.modules():
            module.eval()
            module.train = lambda mode=True, module=module: module


def test_a_cnn_trains_on_its_cache_with_flips_as_with_its_frozen_stages_in_eval_mode(tmp_path):
    entry, cached, cached_batches, trained = _fit_images(tmp_path / "cached", ["flip"])
    no_entry, computed, computed_batches, _ = _fit_images(
        tmp_path / "computed", ["flip"], before=_frozen_stages_in_eval_mode, cache_frozen=False
    )
    assert entry["groups"] == [3] and no_entry is None
    assert entry["examples"] == 2 * 120  # each image and its mirror image: 20 validation images join training
    assert cached_batches <= computed_batches - 100 + CACHE_BATCHES  # 100 steps (the floor) read the cache
    torch.testing.assert_close(torch.as_tensor(cached), torch.as_tensor(computed), atol=1e-5, rtol=0)
    assert all("forward" not in unit.__dict__ for unit in trained.prefix_units(3))


def test_gradual_unfreezing_reads_a_cnns_cache_until_its_last_stage(tmp_path):
    entry, _, cached_batches, trained = _fit_images(tmp_path / "cached", ["flip"], "gradual")
    _, _, computed_batches, _ = _fit_images(tmp_path / "computed", ["flip"], "gradual", cache_frozen=False)
    groups = len(trained.layer_groups())
    assert entry["groups"] == [groups - 2, groups - 1]  # the head alone trains, then the top stage too
    assert cached_batches <= computed_batches - 66 + CACHE_BATCHES  # the first two of three stages (66 of 100 steps) read it
    assert all("forward" not in unit.__dict__ for unit in trained.prefix_units(groups - 1))


@pytest.mark.parametrize("augment", [["crop"], ["flip", "mixup"], ["jitter"]])
def test_augmentation_without_bound_leaves_the_cnn_uncached(tmp_path, augment):
    entry, *_ = _fit_images(tmp_path, augment)
    assert entry == "off: training augments the inputs without bound"
