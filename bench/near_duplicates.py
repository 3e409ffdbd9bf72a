"""Calibrates the near-duplicate threshold of the data checks (data/checks.py): the cosine between the frozen
features of a text and a lightly edited copy of it, against each text's nearest distinct neighbour.

    .venv/bin/python bench/near_duplicates.py [--backbone minilm-l6] [--dataset rt-polarity] [--n 3000]

Edits: one word deleted, two neighbouring words swapped, punctuation removed, one word replaced by another
word of the corpus. Both raw and centred features (the mean over the dataset subtracted) are reported.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def edits(text: str, rng: np.random.Generator, vocabulary: list[str]) -> dict[str, str]:
    words = text.split()
    i = int(rng.integers(len(words)))
    j = min(i + 1, len(words) - 1)
    swapped = list(words)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    replaced = list(words)
    replaced[i] = str(rng.choice(vocabulary))
    return {
        "delete a word": " ".join(words[:i] + words[i + 1 :]),
        "swap two words": " ".join(swapped),
        "drop punctuation": " ".join(w for w in words if any(c.isalnum() for c in w)),
        "replace a word": " ".join(replaced),
    }


def main() -> None:
    import torch

    from transferlab.backbones import build_classifier, load_preprocessor, resolve_backbone
    from transferlab.data.catalog import load_dataset
    from transferlab.data.splits import stratified_subset
    from transferlab.training.inference import pooled_features

    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--dataset", default="rt-polarity")
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    data = stratified_subset(load_dataset(args.dataset), args.n, 0)
    texts = [t for t in data.inputs if len(t.split()) >= 4]
    rng = np.random.default_rng(0)
    vocabulary = sorted({w for t in texts for w in t.split() if w.isalpha()})
    originals = [texts[i] for i in rng.choice(len(texts), 300, replace=False)]
    variants = [edits(t, rng, vocabulary) for t in originals]
    asset = resolve_backbone(args.backbone)
    pre = load_preprocessor(asset, 128)
    model = build_classifier(asset, data.label_names)
    with torch.no_grad():

        def embed(batch: list[str]) -> np.ndarray:
            return pooled_features(model, pre.encode(batch), pre.collate, pre.length_of, 64)

        corpus = embed(texts)
        edited = {kind: embed([v[kind] for v in variants]) for kind in variants[0]}
        base = embed(originals)
    for name, shift in (("raw", 0.0), ("centred", corpus.mean(0))):

        def unit(x: np.ndarray, shift: np.ndarray | float = shift) -> np.ndarray:
            x = x - shift
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        c = unit(corpus)
        sims = c @ c.T
        np.fill_diagonal(sims, -1)
        nearest = sims.max(1)
        print(f"\n{args.backbone} on {args.dataset}, {len(texts)} texts, {name} features")
        print(f"nearest distinct neighbour: median {np.median(nearest):.3f}, 99th pct {np.percentile(nearest, 99):.3f}, "
              f"99.9th {np.percentile(nearest, 99.9):.3f}, max {nearest.max():.3f}")  # fmt: skip
        for threshold in (0.9, 0.93, 0.95, 0.97):
            print(f"  share of texts with a distinct neighbour >= {threshold}: {np.mean(nearest >= threshold):.4f}")
        b = unit(base)
        for kind, x in edited.items():
            cos = (b * unit(x)).sum(1)
            print(f"  {kind:<17} cosine to the original: 5th pct {np.percentile(cos, 5):.3f}, median {np.median(cos):.3f}, "
                  f"share >= 0.95 {np.mean(cos >= 0.95):.2f}, >= 0.9 {np.mean(cos >= 0.9):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
