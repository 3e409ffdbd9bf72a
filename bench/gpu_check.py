"""One short check of the CUDA path, for a machine with a GPU (CI has none).

A randomly initialised 4-layer BERT (random weights do not change the code path) and a
synthetic sentiment task: `compare` runs head, full and LoRA with bf16 mixed precision, then
`train` exports LoRA and `predict` reloads it on the GPU. Checks: head and full fine-tuning learn
the task, LoRA's peak GPU memory is below full fine-tuning's, and the exported model reproduces
the in-memory probabilities.

    PYTHONPATH=src python bench/gpu_check.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import VOCAB, sentiment_texts  # noqa: E402

from transferlab.config import load_run_config  # noqa: E402
from transferlab.recipes.compare import compare  # noqa: E402
from transferlab.recipes.experiment import prepare
from transferlab.recipes.loading import load_model  # noqa: E402
from transferlab.recipes.train import train  # noqa: E402


def bert_base_folder(directory: Path) -> Path:
    torch.manual_seed(0)
    directory.mkdir(parents=True)
    BertTokenizerFast(vocab={word: i for i, word in enumerate(VOCAB)}).save_pretrained(directory)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    BertModel(config).save_pretrained(directory)
    return directory


def main(out: Path) -> int:
    assert torch.cuda.is_available(), "no GPU"
    print(
        "float32 matmul precision by default:", torch.get_float32_matmul_precision(), "allow_tf32:", torch.backends.cuda.matmul.allow_tf32
    )
    torch.set_float32_matmul_precision("highest")  # so that exported vs in-memory compares the code, not TF32
    work = Path(tempfile.mkdtemp())
    backbone = bert_base_folder(work / "bert-base-random")
    texts, labels = sentiment_texts(3000)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(work / "data.csv", index=False)
    common = dict(
        backbone=str(backbone),
        dataset=str(work / "data.csv"),
        n_train=2000,
        n_test=500,
        training={"epochs": 3, "batch_size": 32, "lr": 1e-3},
    )
    started = time.perf_counter()
    results = compare(load_run_config(None, **common), out / "compare", log=print)
    report = {
        "device": torch.cuda.get_device_name(0),
        "bf16": torch.cuda.is_bf16_supported(),
        "matmul_precision_after": torch.get_float32_matmul_precision(),
        "compare_seconds": time.perf_counter() - started,
        "strategies": {
            name: {k: r[k] for k in ("train_seconds", "peak_memory_mb", "trainable_params")}
            | {"accuracy": r["metrics"]["accuracy"]["mean"]}
            for name, r in results["strategies"].items()
        },
    }
    lora_config = load_run_config(None, strategies=["lora"], **common)
    run, _ = train(lora_config, out / "train", log=print)
    test_texts = prepare(lora_config, log=print).split.part("test").inputs
    exported = load_model(out / "train" / "model").predict_proba(test_texts)
    report["export_max_abs_diff"] = float(np.abs(exported - run.test_probs).max())
    s = report["strategies"]
    report["checks"] = {
        # LoRA on a random backbone only adapts random attention: not expected to learn this task.
        "head and full learn (accuracy >= 0.75)": s["head"]["accuracy"] >= 0.75 and s["full"]["accuracy"] >= 0.75,
        "lora peak memory < full": s["lora"]["peak_memory_mb"] < s["full"]["peak_memory_mb"],
        "exported == in memory (1e-4)": report["export_max_abs_diff"] < 1e-4,
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
