"""A folder written by `transferlab train`, loaded back into torch: merged weights, or a peft adapter over its backbone."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from torch import nn

from transferlab.backbones import Preprocessor, build_classifier, family_named, resolve_backbone
from transferlab.backbones.base import MULTI_LABEL
from transferlab.errors import UserError
from transferlab.recipes.run_folder import is_complete
from transferlab.runio import CONFIG, MANIFEST, RESULTS
from transferlab.training.inference import default_device, predict_proba


@dataclass
class LoadedModel:
    model: nn.Module
    preprocessor: Preprocessor
    label_names: list[str]
    modality: str = "text"
    manifest: dict[str, Any] = field(default_factory=dict)  # transferlab.json: what the model is and was trained on

    @property
    def threshold(self) -> float | list[float] | None:
        """The decision threshold the run tuned (binary; multi-label: one per label), or None: the most probable class."""
        return self.manifest.get("threshold")

    @property
    def multi_label(self) -> bool:
        return bool(self.manifest.get("multi_label"))

    def predict_proba(self, inputs: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        features = self.preprocessor.encode(inputs)
        return predict_proba(self.model, features, self.preprocessor.collate, self.preprocessor.length_of, batch_size)

    def sample_inputs(self) -> list[Any]:
        """Two inputs of different lengths (or sizes): what an export is checked on against this model."""
        if self.modality == "image":
            rng = np.random.default_rng(0)
            return [rng.integers(0, 256, (96, 80, 3), dtype=np.uint8) for _ in range(2)]
        return ["a short text", "a longer text, with a few more words in it than the first one has"]

    def sample_batch(self) -> dict[str, torch.Tensor]:
        """`sample_inputs`, preprocessed as predict does."""
        return {k: v for k, v in self.preprocessor.collate(self.preprocessor.encode(self.sample_inputs())).items() if k != "labels"}

    def merged(self, target: str) -> nn.Module:
        """The classifier as one model on the CPU in eval mode, for exporting to `target`: a kept adapter is merged
        into it (in place: this object then holds the merged model); virtual tokens are refused."""
        if isinstance(self.model, PeftModel):
            if self.model.active_peft_config.is_prompt_learning:
                raise UserError(f"prompt and prefix tuning's virtual tokens cannot be merged into a {target} classifier")
            self.model = self.model.merge_and_unload()
        self.model = self.model.cpu().eval().requires_grad_(False)
        return self.model


# A kept adapter's BatchNorm running statistics: training updates them in the frozen body, and a peft adapter holds
# only its own weights, so without these an adapted CNN would be read with the pretrained statistics.
BATCH_NORM_FILE = "batch_norm.safetensors"


def batch_norm_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every BatchNorm layer's buffers (running mean and variance, batches seen), by their names in `model`."""
    return {
        f"{name}.{key}": buffer.detach().cpu().contiguous()
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for key, buffer in module.named_buffers(recurse=False)
    }


def save_batch_norm_statistics(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    statistics = batch_norm_statistics(model)
    if statistics:
        save_file(statistics, str(Path(folder) / BATCH_NORM_FILE))


def _load_batch_norm_statistics(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import load_file

    path = folder / BATCH_NORM_FILE
    if path.is_file():
        statistics = load_file(str(path))
        unknown = set(statistics) - set(batch_norm_statistics(model))
        if unknown:
            raise UserError(f"{path}: statistics of layers the model does not have ({sorted(unknown)[0]}, ...)")
        model.load_state_dict(statistics, strict=False)


def read_manifest(path: Path) -> dict[str, Any]:
    """A model folder's manifest; a damaged one is refused in one line."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({str(err).splitlines()[0]})") from None
    if not isinstance(manifest, dict) or "format" not in manifest:
        raise UserError(f"{path}: not a transferlab model manifest (no format)")
    return manifest


def unfinished_run(model_dir: Path) -> bool:
    """Whether `model_dir` sits in a run folder whose run did not finish: its model may be any checkpoint's."""
    run = Path(model_dir).parent
    return (run / CONFIG).is_file() and not is_complete(run)


def load_model(model_dir: Path) -> LoadedModel:
    """A folder written by `export` (merged or adapter); anything else is refused with a reason."""
    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST
    if not manifest_path.is_file():
        hint = " (the run may not have finished)" if model_dir.is_dir() else ""
        raise UserError(f"{model_dir} is not a model exported by 'transferlab train'{hint}: no {MANIFEST}")
    if unfinished_run(model_dir):
        raise UserError(
            f"{model_dir}: the run that wrote it did not finish (no complete {model_dir.parent / RESULTS}); run its command again to resume"
        )
    manifest = read_manifest(manifest_path)
    if manifest["format"] not in ("merged", "peft-adapter"):
        raise UserError(
            f"{model_dir}: an export in the {manifest['format']} format, not a model torch loads (docs/deploy.md says how to run it)"
        )
    # Models exported before families were recorded name only what they read.
    family = family_named(manifest.get("family") or ("cnn" if manifest.get("modality") == "image" else "encoder"))
    preprocessor = family.load_preprocessor(model_dir, manifest)
    if manifest["format"] == "peft-adapter":
        asset = resolve_backbone(manifest["backbone"])
        if asset.hashes != manifest["backbone_sha256"]:
            raise UserError(f"{model_dir}: the adapter was trained on a different '{manifest['backbone']}' (weight hashes differ)")
        base = build_classifier(asset, manifest["label_names"], manifest["pooling"])
        base.config.calibration_temperature = manifest.get("temperature", 1.0)  # the adapter holds weights, not the config
        base.config.problem_type = MULTI_LABEL if manifest.get("multi_label") else None
        model = PeftModel.from_pretrained(base, str(model_dir))
        _load_batch_norm_statistics(model, model_dir)
    else:
        model = family.load_merged(model_dir)
    return LoadedModel(model.to(default_device()).eval(), preprocessor, manifest["label_names"], family.inputs, manifest)
