"""An exported ONNX classifier run with onnxruntime, tokenizers, Pillow and numpy only: no torch, no transformers.

`predict --backend onnxruntime` and `serve --backend onnxruntime` load a `transferlab export` folder through this
module, so a deployment image can leave torch out (tests/test_export_formats.py runs both where torch cannot be
imported). Preprocessing follows the torch path step by step: the tokenizer's own `tokenizer.json` truncated at
the model's max length and padded per batch on the tokenizer's side; images decoded by Pillow, the shorter side
resized with the weights' interpolation, centre-cropped with torchvision's rounding, scaled to [0, 1] and normalised.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.errors import MissingAssetError, UserError
from transferlab.pixels import rgb_image, uint8_image
from transferlab.runio import MANIFEST

ONNX_FILE = "model.onnx"


def _require(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingAssetError(f"the onnxruntime backend needs {package}: pip install {package}") from None


class OnnxClassifier:
    """A `transferlab export --format onnx|onnx-int8` folder: inputs in, class probabilities out."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        if not (folder / ONNX_FILE).is_file() or not (folder / MANIFEST).is_file():
            raise UserError(f"{folder}: not a folder written by 'transferlab export' (no {ONNX_FILE} beside {MANIFEST})")
        onnxruntime = _require("onnxruntime", "onnxruntime")
        self.folder = folder
        self.manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        self.label_names: list[str] = self.manifest["label_names"]
        self.threshold: float | list[float] | None = self.manifest.get("threshold")  # binary: class 1 from this probability on
        self.multi_label: bool = bool(self.manifest.get("multi_label"))  # the graph gives a sigmoid per label
        self.modality: str = "image" if "pixel_values" in self.manifest["onnx_inputs"] else "text"
        self.session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
        self._encode = _ImageInputs(folder) if self.modality == "image" else _TextInputs(folder, self.manifest["max_length"])

    def predict_proba(self, inputs: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Probabilities per input, in input order; texts are batched by length so padding stays short."""
        order = self._encode.order(inputs)
        probs = np.empty((len(inputs), len(self.label_names)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            feeds = self._encode([inputs[i] for i in chosen])
            probs[chosen] = self.session.run(None, {name: feeds[name] for name in self.manifest["onnx_inputs"]})[0]
        return probs


class _TextInputs:
    def __init__(self, folder: Path, max_length: int):
        tokenizers = _require("tokenizers", "tokenizers")
        settings = _json_or_empty(folder / "tokenizer_config.json")
        self.tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length, direction=settings.get("truncation_side", "right"))
        pad = settings.get("pad_token") or self.tokenizer.id_to_token(0)
        pad = pad["content"] if isinstance(pad, dict) else pad
        self.tokenizer.enable_padding(
            direction=settings.get("padding_side", "right"), pad_id=self.tokenizer.token_to_id(pad) or 0, pad_token=pad
        )

    def order(self, texts: Sequence[str]) -> np.ndarray:
        return np.argsort([len(text) for text in texts], kind="stable")

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch([str(text) for text in texts])
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }


class _ImageInputs:
    def __init__(self, folder: Path):
        self.image = _require("PIL.Image", "pillow")
        settings = _json_or_empty(folder / "preprocessor_config.json")
        self.shortest_edge = settings["size"]["shortest_edge"]
        self.crop = (settings["crop_size"]["height"], settings["crop_size"]["width"])
        self.resample = getattr(self.image.Resampling, str(settings.get("resample", "bilinear")).upper())
        self.mean = np.array(settings["image_mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.array(settings["image_std"], dtype=np.float32).reshape(3, 1, 1)

    def order(self, images: Sequence[Any]) -> np.ndarray:
        return np.arange(len(images))

    def _pixels(self, item: Any) -> np.ndarray:
        if isinstance(item, np.ndarray):
            image = self.image.fromarray(uint8_image(item)).convert("RGB")
        else:
            try:
                with self.image.open(item) as opened:
                    image = rgb_image(opened)
            except (OSError, ValueError, self.image.DecompressionBombError) as err:  # the last: over PIL's pixel limit
                raise UserError(f"{item}: cannot decode image: {err}") from None
        width, height = image.size
        short, long = min(width, height), max(width, height)
        size = (self.shortest_edge, int(self.shortest_edge * long / short))
        size = size if width <= height else size[::-1]
        if size != (width, height):
            image = image.resize(size, resample=self.resample)
        top, left = (int(round((side - crop) / 2.0)) for side, crop in zip(image.size[::-1], self.crop))
        image = image.crop((left, top, left + self.crop[1], top + self.crop[0]))
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        return (pixels - self.mean) / self.std

    def __call__(self, images: list[Any]) -> dict[str, np.ndarray]:
        return {"pixel_values": np.stack([self._pixels(item) for item in images])}


def _json_or_empty(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
