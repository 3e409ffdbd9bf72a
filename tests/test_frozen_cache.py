"""The frozen-layer cache of partial fine-tuning and gradual unfreezing (training/frozen_cache.py): the cached model
must give the logits the full model gives, whatever the padding of the batch, and leave the model as it found it."""

from __future__ import annotations

import pytest
import torch

from transferlab.backbones import TextPreprocessor, build_classifier, resolve_backbone
from transferlab.settings import TrainingConfig
from transferlab.strategies import get_strategy
from transferlab.training.frozen_cache import FrozenLayerCache
from transferlab.training.inference import predict_proba
from transferlab.training.loop import FitData

from .conftest import sentiment_texts, tiny_bert, tiny_distilbert, tiny_llama


@pytest.fixture(scope="module", params=["bert", "distilbert", "llama"])
def family(request, tmp_path_factory):
    build = {"bert": tiny_bert, "distilbert": tiny_distilbert, "llama": tiny_llama}[request.param]
    path = build(tmp_path_factory.mktemp(request.param))
    pre = TextPreprocessor.from_pretrained(str(path), 32)
    texts, labels = sentiment_texts(40)
    torch.manual_seed(0)
    model = build_classifier(resolve_backbone(str(path)), ["neg", "pos"], "auto").eval()
    return model, pre, pre.encode(texts, labels)


@pytest.mark.parametrize("frozen_layers", [1, 2])
def test_cached_model_gives_the_full_models_probabilities(family, frozen_layers):
    model, pre, features = family
    full = predict_proba(model, features, pre.collate, pre.length_of, batch_size=8)
    cache = FrozenLayerCache(model, frozen_layers).fill(features, pre.collate, pre.length_of, batch_size=16)
    assert len(cache.rows) == len({tuple(f["input_ids"]) for f in features})
    with cache.serving():
        # batches of 5 in input order: each example sits beside other neighbours, with other padding, than when cached
        cached = torch.cat([torch.softmax(model(**pre.collate(features[i : i + 5])).logits, -1) for i in range(0, 40, 5)])
    torch.testing.assert_close(cached.detach(), torch.as_tensor(full), atol=1e-5, rtol=0)
    assert all("forward" not in block.__dict__ for block in model.layer_stack())  # the model is whole again
    torch.testing.assert_close(torch.as_tensor(predict_proba(model, features, pre.collate, pre.length_of, 8)), torch.as_tensor(full))


def test_an_example_outside_the_cache_is_an_error(family):
    model, pre, features = family
    cache = FrozenLayerCache(model, 1).fill(features[:10], pre.collate, pre.length_of, batch_size=16)
    with cache.serving(), pytest.raises(RuntimeError, match="outside the frozen-layer cache"):
        model(**pre.collate(features[10:12]))


# The strategies that freeze blocks, with settings that leave the tiny BERT's (2 blocks) bottom block frozen in
# partial fine-tuning, and in gradual unfreezing both blocks in stage 1 and the bottom one in stage 2 of 3.
FREEZING = {"partial": {"freeze_below": 2}, "gradual": {"stages": 3}}
CACHED_DEPTHS = {"partial": [1], "gradual": [1, 2]}


def _fit(tmp_path, strategy, **options):
    """`strategy` on a tiny BERT without dropout in its blocks: the frozen blocks then compute the same output with
    or without the cache. Also returns how many batches the bottom block's attention computed."""
    path = tiny_bert(tmp_path / "bert", dropout=0.0)
    pre = TextPreprocessor.from_pretrained(str(path), 32)
    texts, labels = sentiment_texts(400, seed=1)
    features = pre.encode(texts, labels)
    torch.manual_seed(0)
    model = build_classifier(resolve_backbone(str(path)), ["neg", "pos"], "mean")
    data = FitData(features[:300], features[300:340], pre.collate, ["neg", "pos"], length_of=pre.length_of)
    computed = []
    next(model.layer_stack()[0].children()).register_forward_hook(lambda *_: computed.append(1))
    trained = get_strategy(strategy, **FREEZING[strategy], **options).fit(model, data, TrainingConfig(epochs=3, lr=3e-3, seed=0))
    cache_log = [e["frozen_layer_cache"] for e in data.log_history if "frozen_layer_cache" in e]
    probs = predict_proba(trained, features[340:], pre.collate, pre.length_of)
    return probs, (probs.argmax(1) == labels[340:]).mean(), cache_log, trained, len(computed)


@pytest.mark.parametrize("strategy", sorted(FREEZING))
def test_training_on_the_cache_trains_as_without_it(tmp_path, strategy):
    """Without dropout in the frozen blocks the cache changes nothing but the time: the same steps, the same model."""
    cached, accuracy, [entry], trained, cached_batches = _fit(tmp_path / "cached", strategy)
    computed, _, no_entry, _, computed_batches = _fit(tmp_path / "computed", strategy, cache_frozen=False)
    assert cached_batches < computed_batches  # the frozen block read the cache instead of computing
    assert entry["blocks"] == CACHED_DEPTHS[strategy]
    assert entry["examples"] == len(set(sentiment_texts(400, seed=1)[0][:340]))  # one row per distinct sentence
    assert no_entry == [] and all("forward" not in block.__dict__ for block in trained.layer_stack())
    assert accuracy >= 0.7  # it learned the task
    torch.testing.assert_close(torch.as_tensor(cached), torch.as_tensor(computed), atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", sorted(FREEZING))
def test_a_cache_over_its_limit_is_skipped(tmp_path, strategy):
    _, _, [entry], *_ = _fit(tmp_path, strategy, cache_limit_mb=1e-6)
    assert entry.startswith("off:") and "cache_limit_mb" in entry


def test_one_pass_caches_every_depth(family):
    """The output after 1 and after 2 blocks, from one pass: each serves the model as a cache of that depth alone."""
    model, pre, features = family
    full = predict_proba(model, features, pre.collate, pre.length_of, batch_size=8)
    both = FrozenLayerCache(model, [2, 1]).fill(features, pre.collate, pre.length_of, batch_size=16)
    assert both.depths == [1, 2]
    for depth in (1, 2):
        with both.serving(depth):
            cached = predict_proba(model, features, pre.collate, pre.length_of, batch_size=5)
        torch.testing.assert_close(torch.as_tensor(cached), torch.as_tensor(full), atol=1e-5, rtol=0)
        alone = FrozenLayerCache(model, depth).fill(features, pre.collate, pre.length_of, batch_size=16)
        assert all(torch.equal(alone.rows[key], both.states[depth][key]) for key in alone.rows)
    with pytest.raises(ValueError, match="no cached output after 3 blocks"):
        with both.serving(3):
            pass
