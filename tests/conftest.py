"""Tiny randomly initialised backbones built from a config (fast), and a small learnable text task."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import BertConfig, BertModel, BertTokenizerFast, DistilBertConfig, DistilBertModel  # noqa: E402

POSITIVE = ["good", "great", "fine", "superb", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "terrible"]
NEUTRAL = ["the", "film", "movie", "plot", "actors", "story", "was", "is", "a", "very", "and", "but"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + NEUTRAL


def sentiment_texts(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Sentences whose label is told by one sentiment word among neutral ones: learnable in a few steps."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = rng.choices(NEUTRAL, k=rng.randint(3, 9))
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def _save_tiny(directory: Path, model: torch.nn.Module) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    BertTokenizerFast(vocab={word: i for i, word in enumerate(VOCAB)}, do_lower_case=True).save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


def tiny_bert(directory: Path, dropout: float = 0.1) -> Path:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return _save_tiny(directory, BertModel(config))


def tiny_distilbert(directory: Path) -> Path:
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(VOCAB), dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)
    return _save_tiny(directory, DistilBertModel(config))


TINY_BACKBONES = {"tiny-bert": tiny_bert, "tiny-distilbert": tiny_distilbert}


@pytest.fixture(scope="session", params=list(TINY_BACKBONES))
def tiny_backbone(request, tmp_path_factory) -> Path:
    """Each tiny backbone family in turn: a local Hugging Face model folder."""
    return TINY_BACKBONES[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def sentiment_csv(tmp_path) -> Path:
    import pandas as pd

    texts, labels = sentiment_texts(240)
    path = tmp_path / "sentiment.csv"
    pd.DataFrame({"text": texts, "label": ["positive" if y else "negative" for y in labels]}).to_csv(path, index=False)
    return path
