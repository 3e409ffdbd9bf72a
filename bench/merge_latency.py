"""Inference latency of a merged LoRA model against the plain backbone, measured in one run.

Merging W + (alpha / r) B A leaves the architecture unchanged, so the merged model should be as
fast as the plain classifier; the unmerged peft model pays for the extra low-rank products.
Timings interleave the three models over several rounds and report medians.

    python bench/merge_latency.py [--sentences 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from transferlab.backbones import build_classifier, load_preprocessor, resolve_backbone
from transferlab.data.catalog import load_dataset
from transferlab.strategies import get_strategy
from transferlab.training.inference import predict_proba


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/merge_latency.json"))
    args = parser.parse_args()

    asset = resolve_backbone(args.backbone)
    data = load_dataset("rt-polarity")
    preprocessor = load_preprocessor(asset, 128)
    features = preprocessor.encode(data.inputs[: args.sentences])
    torch.manual_seed(0)
    plain = build_classifier(asset, data.label_names, "mean").eval()
    lora = get_strategy("lora")
    wrapped = lora.prepare(build_classifier(asset, data.label_names, "mean")).eval()
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)  # as after training: a non-zero update
    unmerged = copy.deepcopy(wrapped)
    merged = lora.export(wrapped).eval()  # merges in place
    reference = predict_proba(unmerged, features, preprocessor.collate, preprocessor.length_of)

    models = {"plain": plain, "lora unmerged": unmerged, "lora merged": merged}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            started = time.perf_counter()
            predict_proba(model, features, preprocessor.collate, preprocessor.length_of)
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(t) for name, t in times.items()}
    merged_probs = predict_proba(merged, features, preprocessor.collate, preprocessor.length_of)
    report = {
        "sentences": args.sentences,
        "rounds": args.rounds,
        "median_seconds": medians,
        "merged_over_plain": medians["lora merged"] / medians["plain"],
        "unmerged_over_plain": medians["lora unmerged"] / medians["plain"],
        "merged_vs_unmerged_max_abs_diff": float(abs(merged_probs - reference).max()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
