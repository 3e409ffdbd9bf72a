"""ImageNet CNNs from torchvision or timm (vision.py): the `cnn` family, and its image preprocessing.

It claims `timm:NAME=FILE` / `torchvision:NAME=FILE` specs (the user's weights for a library's
architecture), `timm:hf-hub:ORG/NAME` (downloads, named by the user) and folders in timm's layout
(a config.json naming an architecture).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from transferlab.backbones.base import Preprocessor, TransferModel, label_value
from transferlab.backbones.registry import BackboneFamily, register_family
from transferlab.backbones.vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VisionConfig,
    build_vision_classifier,
    from_native,
    load_vision_folder,
    vision_config_for,
)
from transferlab.catalog import ResolvedAsset, folder_asset, folder_config
from transferlab.errors import UserError
from transferlab.hashing import sha256_of
from transferlab.pixels import rgb_image, uint8_image

LIBRARIES = ("timm", "torchvision")

# --normalization: "auto" takes mean/std from the weights' own configuration; the others
# force one on purpose, to show what the wrong one costs: another family's statistics, none at all
# (pixels in [0, 1]), or raw 0-255 pixel values (the classic forgotten division).
NORMALIZATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "half": ((0.5,) * 3, (0.5,) * 3),
    "none": ((0.0,) * 3, (1.0,) * 3),
    "raw": ((0.0,) * 3, (1 / 255,) * 3),
}
# Per image; and mixup (Zhang et al. 2018), which blends pairs of images and their labels per training batch
# (timm's Mixup, applied by the Trainer: training/loop.py).
IMAGE_AUGMENTATIONS = ("crop", "flip", "jitter", "randaugment", "mixup")
UNBOUNDED_AUGMENTATIONS = ("crop", "jitter", "randaugment")  # each draw is a new image; a flip makes one
MIXUP_ALPHA = 0.2  # Beta(0.2, 0.2) blend weights, Zhang et al.'s ImageNet setting
# Flips only by default: with 3 epochs of a few thousand images, random crops cost accuracy (train and
# test framing differ; mobilenet-v2, fashion-mnist 1,000, 112 px: none 0.849, flip 0.847, crop 0.7-1
# + flip 0.829, crop 0.35-1 + flip 0.784). Crops, jitter and RandAugment pay off in longer training.
DEFAULT_IMAGE_AUGMENT = ("flip",)
# AdamW rates for CNNs, which need and tolerate larger steps than Transformers: BatchNorm keeps the
# activations scaled. Full fine-tuning of mobilenet-v2 on fashion-mnist (2,000 examples, 112 px,
# 3 epochs): 1e-3 -> 0.876, 5e-4 -> 0.864 (docs/findings.md); the others are scaled alike.
IMAGE_STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    "full": {"lr": 1e-3},
    "discriminative": {"lr": 1e-3},
    "partial": {"lr": 1e-3},
    "gradual": {"lr": 1e-3},
    "lp-ft": {"lr": 3e-4},
    "lora": {"lr": 3e-3},
    "bitfit": {"lr": 3e-3},
}


class ImagePreprocessor(Preprocessor):
    """Decode once to uint8 at the model's resolution; normalise per batch; augment training batches only.

    Evaluation resizes the shorter side to size / crop_pct and centre-crops (the weights' own recipe), on the Pillow
    image (torchvision's transforms call Pillow's resize for it), so a deployment with Pillow and numpy alone
    (`transferlab.deploy`) reproduces the pixels exactly. Grey images become three identical channels.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        size: int = 224,
        crop_pct: float = 0.875,
        interpolation: str = "bilinear",
        augment: Sequence[str] = (),
    ):
        self.mean, self.std, self.size, self.crop_pct = tuple(mean), tuple(std), size, crop_pct
        self.interpolation = interpolation
        self.augment = list(augment)
        mode = v2.InterpolationMode(interpolation)
        self._resize = v2.Compose([v2.Resize(round(size / crop_pct), interpolation=mode, antialias=True), v2.CenterCrop(size)])
        self._normalize = v2.Normalize(self.mean, self.std)
        steps = {
            "crop": v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1.1), interpolation=mode, antialias=True),
            "flip": v2.RandomHorizontalFlip(),
            "jitter": v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
            "randaugment": v2.RandAugment(),
        }
        chosen = [steps[name] for name in steps if name in self.augment]
        self._train = v2.Compose(chosen) if chosen else None

    @classmethod
    def for_model(cls, config: VisionConfig, size: int, normalization: str, augment: Sequence[str]) -> ImagePreprocessor:
        mean, std = (config.mean, config.std) if normalization == "auto" else NORMALIZATIONS[normalization]
        return cls(mean, std, size, config.crop_pct, config.interpolation, augment)

    def _pixels(self, item: Any) -> torch.Tensor:
        from PIL import Image

        if isinstance(item, np.ndarray):
            image = Image.fromarray(uint8_image(item)).convert("RGB")
        else:
            try:
                with Image.open(item) as opened:
                    image = rgb_image(opened)
            except (OSError, ValueError, Image.DecompressionBombError) as err:  # the last: over PIL's pixel limit
                raise UserError(f"{item}: cannot decode image: {err}") from None
        return v2.functional.pil_to_tensor(self._resize(image))

    def encode(self, inputs: Sequence[Any], labels: Sequence[int] | None = None) -> list[dict[str, Any]]:
        features = [{"pixel_values": self._pixels(item)} for item in inputs]
        if labels is not None:
            for feature, label in zip(features, labels):
                feature["labels"] = label_value(label)
        return features

    def train_transform(self, feature: dict[str, Any]) -> dict[str, Any]:
        if self._train is None:
            return feature
        return {**feature, "pixel_values": self._train(feature["pixel_values"])}

    def train_variants(self, feature: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Every version train_transform can make of an image: itself, and its mirror image when flips are on; None
        when a transform draws from a continuum (crops, jitter, RandAugment)."""
        if set(self.augment) & set(UNBOUNDED_AUGMENTATIONS):
            return None
        if "flip" not in self.augment:
            return [feature]
        return [feature, {**feature, "pixel_values": v2.functional.horizontal_flip(feature["pixel_values"])}]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([f["pixel_values"] for f in features]).float().div_(255)
        batch = {"pixel_values": self._normalize(pixels).contiguous(memory_format=torch.channels_last)}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch

    def save(self, directory: Path) -> None:
        """Hugging Face's image-processor keys, so the settings read like any HF vision model's."""
        settings = {
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "size": {"shortest_edge": round(self.size / self.crop_pct)},
            "crop_size": {"height": self.size, "width": self.size},
            "crop_pct": self.crop_pct,
            "resample": self.interpolation,
            "do_center_crop": True,
            "do_normalize": True,
            "do_convert_rgb": True,
        }
        (Path(directory) / "preprocessor_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ImagePreprocessor:
        s = json.loads((Path(directory) / "preprocessor_config.json").read_text(encoding="utf-8"))
        return cls(s["image_mean"], s["image_std"], s["crop_size"]["height"], s["crop_pct"], s["resample"])


def _timm_folder_architecture(spec: str) -> str | None:
    """'library:name' for a folder in timm's layout (config.json names an architecture), else None."""
    values = folder_config(spec)
    if values and "architecture" in values and "model_type" not in values:
        return f"{values.get('library', 'timm')}:{values['architecture']}"
    return None


def _library_asset(spec: str) -> ResolvedAsset:
    """`timm:NAME=FILE` or `torchvision:NAME=FILE` (the user's weights); `timm:hf-hub:ORG/NAME` downloads."""
    library, _, rest = spec.partition(":")
    name, _, weights = rest.partition("=")
    if library == "timm" and name.startswith("hf-hub:") and not weights:
        return ResolvedAsset(spec, spec, {}, CnnFamily.name, f"timm:{name}")
    if not name or not weights:
        raise UserError(f"backbone '{spec}': write {library}:MODEL=WEIGHTS_FILE (no ImageNet weights are packaged for '{name}')")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"backbone '{spec}': no weights file {path}")
    return ResolvedAsset(spec, str(path.resolve()), {path.name: sha256_of(path)}, CnnFamily.name, f"{library}:{name}")


@register_family
class CnnFamily(BackboneFamily):
    name = "cnn"
    inputs = "image"
    library_name = "timm"
    augmentations = IMAGE_AUGMENTATIONS
    default_augment = DEFAULT_IMAGE_AUGMENT
    strategy_defaults = IMAGE_STRATEGY_DEFAULTS
    cpu_bf16_declined = (
        "trained under bf16 autocast, mobilenet-v2's full fine-tuning scored 1 to 7 points under fp32 on each of 3 "
        "fashion-mnist seeds (docs/findings.md, bf16 against fp32); --precision bf16 to train in it anyway"
    )

    def claims(self, spec: str) -> bool:
        return spec.partition(":")[0] in LIBRARIES or _timm_folder_architecture(spec) is not None

    def resolve(self, spec: str) -> ResolvedAsset:
        if spec.partition(":")[0] in LIBRARIES:
            return _library_asset(spec)
        return folder_asset(spec, self.name, _timm_folder_architecture(spec) or "")

    def build(self, asset: ResolvedAsset, label_names: list[str], pooling: str = "auto") -> TransferModel:
        return build_vision_classifier(asset, label_names)

    def preprocessor(
        self, asset: ResolvedAsset, max_length: int = 128, image_size: int = 224, normalization: str = "auto", augment: Sequence[str] = ()
    ) -> Preprocessor:
        return ImagePreprocessor.for_model(vision_config_for(asset), image_size, normalization, augment)

    def load_merged(self, model_dir: Path) -> nn.Module:
        return from_native(*load_vision_folder(Path(model_dir)), None)

    def load_preprocessor(self, model_dir: Path, manifest: dict[str, Any]) -> Preprocessor:
        return ImagePreprocessor.from_pretrained(model_dir)
