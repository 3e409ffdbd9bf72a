"""Tiny randomly initialised backbones built from a config (fast), and small learnable text and image tasks."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one of several test processes (pytest-xdist): one core each, not all of them
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertModel,
    LlamaConfig,
    LlamaForCausalLM,
)


def run_without(modules: tuple[str, ...], code: str, *args: str, timeout: int = 300):
    """Run `code` in a fresh interpreter where importing any of `modules` (or their submodules) fails: the proof
    that a deployment path needs none of them."""
    import subprocess
    import sys

    blocker = (
        "import sys\n"
        "class _Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {modules!r}:\n"
        "            raise ImportError(f'{name} is not installed here')\n"
        "sys.meta_path.insert(0, _Refuse())\n"
    )
    return subprocess.run([sys.executable, "-c", blocker + code, *args], capture_output=True, text=True, timeout=timeout)


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


# The shape every tiny text model shares: 2 layers, hidden 32, 4 heads, feed-forward 64.
TINY_SHAPE = dict(
    vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64
)


def tiny_bert(directory: Path, dropout: float = 0.1) -> Path:
    torch.manual_seed(0)
    config = BertConfig(**TINY_SHAPE, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return _save_tiny(directory, BertModel(config))


def tiny_roberta(directory: Path) -> Path:
    """RoBERTa numbers positions from its padding index + 1: of its 64 positions an input fills 63 (pad id 0)."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    return _save_tiny(directory, RobertaModel(RobertaConfig(**TINY_SHAPE, pad_token_id=0)))


def tiny_distilbert(directory: Path) -> Path:
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(VOCAB), dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)
    return _save_tiny(directory, DistilBertModel(config))


def tiny_llama(directory: Path) -> Path:
    """A decoder with its (tied) LM head, shaped like SmolLM2 (grouped-query attention), saved as a causal LM."""
    torch.manual_seed(0)
    config = LlamaConfig(**TINY_SHAPE, num_key_value_heads=2, pad_token_id=0, tie_word_embeddings=True)
    return _save_tiny(directory, LlamaForCausalLM(config))


TINY_BACKBONES = {"tiny-bert": tiny_bert, "tiny-distilbert": tiny_distilbert}


def tiny_cnn(directory: Path) -> Path:
    """timm's `test_efficientnet` (356k parameters, stem + stages + 1x1 head conv), randomly initialised,
    saved in the timm layout that `resolve_backbone` reads as an image backbone."""
    import timm

    from transferlab.backbones.vision import VisionConfig, from_native, native_preprocessing

    torch.manual_seed(0)
    native = timm.create_model("test_efficientnet", num_classes=10)
    config = VisionConfig("timm", "test_efficientnet", **native_preprocessing("timm", "test_efficientnet", native))
    from_native(native, config, [str(i) for i in range(10)]).save_pretrained(directory)
    return directory


def bright_side_images(n: int, size: int = 32, seed: int = 0):
    """Grey images whose label says which half is brighter, under noise: learnable in a few steps."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = i % 2
        image = rng.integers(0, 120, (size, size)).astype(np.uint8)
        half = slice(size // 2, size) if label else slice(0, size // 2)
        image[:, half] += 100
        images.append(image)
        labels.append(label)
    return images, labels


def bright_side_image_folder(root: Path, n: int = 12) -> Path:
    """`bright_side_images` saved as PNGs in one folder per class (left, right): an image data set as users give it."""
    from PIL import Image

    images, labels = bright_side_images(n)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / ("right" if label else "left")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_cnn_dir(tmp_path_factory) -> Path:
    return tiny_cnn(tmp_path_factory.mktemp("tiny-cnn"))


@pytest.fixture(scope="session", params=[*TINY_BACKBONES, "tiny-llama", "tiny-cnn"])
def any_tiny_backbone(request, tmp_path_factory) -> Path:
    """Every tiny family, text (encoders and a decoder) and image: the strategy x backbone matrix runs over these."""
    build = {**TINY_BACKBONES, "tiny-llama": tiny_llama}.get(request.param, tiny_cnn)
    return build(tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session", params=list(TINY_BACKBONES))
def tiny_backbone(request, tmp_path_factory) -> Path:
    """Each tiny backbone family in turn: a local Hugging Face model folder."""
    return TINY_BACKBONES[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    return tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture
def sentiment_csv(tmp_path) -> Path:
    import pandas as pd

    texts, labels = sentiment_texts(240)
    path = tmp_path / "sentiment.csv"
    pd.DataFrame({"text": texts, "label": ["positive" if y else "negative" for y in labels]}).to_csv(path, index=False)
    return path
