"""Offline text augmentation for small data (EDA, Wei & Zou 2019): random word deletion and random word swap.

From "EDA" (Wei & Zou 2019). Written by hand: the libraries that offer it (nlpaug, textattack) are
unmaintained or pull in large models; these two operations need no resources and no network.
Deletion drops each word with probability p, teaching the model not to rely on any single word;
swap exchanges random word pairs, teaching it some order invariance. Both help most below a few
thousand examples and with models that overfit quickly (full fine-tuning); they add little for
frozen-feature heads, whose features are already robust to such noise.
"""

from __future__ import annotations

import random

import numpy as np


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    kept = [w for w in words if rng.random() >= p]
    return kept or [rng.choice(words)]


def random_swap(words: list[str], swaps: int, rng: random.Random) -> list[str]:
    words = list(words)
    for _ in range(swaps if len(words) > 1 else 0):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return words


def augment_texts(
    texts: list[str], labels: np.ndarray, methods: list[str], copies: int, seed: int, p: float = 0.1
) -> tuple[list[str], list[int] | list[list[int]]]:
    """`copies` new versions of every text, each made by one of `methods` chosen at random, with its label (a class id,
    or a multi-label example's 0/1 row)."""
    rng = random.Random(seed)
    out_texts, out_labels = [], []
    for text, label in zip(texts, labels, strict=True):
        words = text.split()
        for _ in range(copies):
            method = rng.choice(methods)
            new = random_deletion(words, p, rng) if method == "delete" else random_swap(words, max(1, round(p * len(words))), rng)
            out_texts.append(" ".join(new))
            out_labels.append(label.tolist() if np.ndim(label) else int(label))
    return out_texts, out_labels
