"""The issue's 'done when' checks on the real assets (make test-slow): the smollm2-135m GGUF cache, perplexity
after full fine-tuning versus LoRA, and EWC / replay on the minilm-l6 two-task sequence. Bounds are loose
(docs/findings.md has the measured values) but each can fail."""

from __future__ import annotations

import time

import numpy as np
import pytest

from transferlab import catalog
from transferlab.backbones import resolve_backbone
from transferlab.config import load_run_config
from transferlab.recipes.forgetting import run_forgetting

pytestmark = pytest.mark.slow


def test_smollm2_gguf_conversion_is_cached_and_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(catalog, "CACHE_DIR", tmp_path)
    first = resolve_backbone("smollm2-135m")
    assert "dequantising" in capsys.readouterr().err
    started = time.perf_counter()
    again = resolve_backbone("smollm2-135m")
    assert time.perf_counter() - started < 15 and again.hashes == first.hashes
    assert "dequantising" not in capsys.readouterr().err
    weights = tmp_path / "models" / "smollm2-135m" / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        handle.write(b"\0" * 64)
    rebuilt = resolve_backbone("smollm2-135m")
    assert "corrupt" in capsys.readouterr().err and rebuilt.hashes == first.hashes


def _forgetting(tmp_path, name, **values):
    path = tmp_path / f"{name}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(values))
    return run_forgetting(load_run_config(path), tmp_path / name, log=lambda _: None)


def test_full_fine_tuning_at_1e3_forgets_more_general_text_than_lora(tmp_path):
    common = dict(
        backbone="smollm2-135m", dataset="rt-polarity", n_train=160, n_test=64, max_length=48, cv=1,
        forgetting={"meter": "perplexity", "general_examples": 32, "general_max_length": 64},
    )  # fmt: skip
    full = _forgetting(tmp_path, "full", strategies=["full"], training={"epochs": 1, "lr": 1e-3}, **common)
    lora = _forgetting(tmp_path, "lora", strategies=["lora"], training={"epochs": 1}, **common)
    f, lo = full["strategies"]["full"]["forgetting"], lora["strategies"]["lora"]["forgetting"]
    full_rise = f["after"]["mean"] / f["before"]["mean"]
    lora_rise = lo["after"]["mean"] / lo["before"]["mean"]
    assert 5 < f["before"]["mean"] < 200  # a working LM on English news
    assert full_rise > 1.5, full_rise  # measured: see docs/findings.md
    assert lora_rise < 1.2, lora_rise
    assert full_rise > lora_rise


def test_ewc_or_replay_keep_more_of_task_a_than_plain_sequential_fine_tuning(tmp_path):
    """bbc-news (task A, learnt from 160 examples) then rt-polarity on one minilm-l6 body, 3 seeds; task A is
    trained once per seed and shared by the three arms (recipes/forgetting.py caches it in the process)."""
    common = dict(
        backbone="minilm-l6", dataset="bbc-news", strategies=["full"], n_train=160, n_test=200, max_length=32, seeds=3,
        training={"epochs": 2, "lr": 1e-4},
    )  # fmt: skip
    kept = {}
    for mitigation in ([], ["ewc"], ["replay"]):
        settings = {"meter": "sequential", "task_b": "rt-polarity", "task_b_lr": 5e-4, "mitigations": mitigation, "ewc_lambda": 1e5}
        run = _forgetting(tmp_path, "-".join(mitigation) or "plain", forgetting=settings, **common)
        kept["-".join(mitigation) or "plain"] = np.mean(run["strategies"]["full"]["forgetting"]["after"]["values"])
    assert max(kept["ewc"], kept["replay"]) > kept["plain"] + 0.01, kept
