"""One backbone in memory, one peft adapter and head per task, switched per forward pass.

Each task is a folder written by `transferlab train --keep-adapter`: a peft adapter whose
`modules_to_save` hold the task's own head, its tokenizer (with the task's max length) and
`transferlab.json` (label names, pooling, the backbone's weight hashes). peft's multi-adapter API
(`PeftModel.from_pretrained(adapter_name=...)`, `load_adapter`, `set_adapter`) keeps them side by
side over a single copy of the backbone's weights.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from peft import PeftModel
from torch import nn

from transferlab.backbones import Preprocessor, build_classifier, family_of, resolve_backbone
from transferlab.backbones.base import MULTI_LABEL
from transferlab.errors import UserError
from transferlab.recipes.loading import read_manifest, unfinished_run
from transferlab.runio import MANIFEST, label_separator
from transferlab.training.inference import default_device, predict_proba


@dataclass
class Task:
    name: str
    folder: Path
    label_names: list[str]
    strategy: str
    pooling: str
    temperature: float
    threshold: float | list[float] | None
    preprocessor: Preprocessor
    multi_label: bool = False
    label_separator: str = ";"


def _read_manifest(name: str, folder: Path) -> dict:
    """The task's manifest, refused unless the folder holds a peft adapter."""
    if not folder.is_dir():
        raise UserError(f"--adapter {name}={folder}: no such folder")
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"--adapter {name}={folder}: not a folder written by 'transferlab train' (no {MANIFEST})")
    if unfinished_run(folder):
        raise UserError(f"--adapter {name}={folder}: the run that wrote it did not finish; run its command again to resume")
    manifest = read_manifest(path)
    if manifest.get("format") != "peft-adapter":
        raise UserError(f"--adapter {name}={folder}: a merged model, not an adapter; train it with --keep-adapter")
    if manifest.get("modality", "text") != "text":
        raise UserError(f"--adapter {name}={folder}: an image classifier; serve answers texts")
    return manifest


def shared_backbone(manifests: dict[str, dict]) -> str:
    """The backbone every adapter was trained on, from their manifests; adapters of different backbones are refused."""
    (first_name, first), *others = manifests.items()
    for name, manifest in others:
        if (manifest["backbone"], manifest["backbone_sha256"]) != (first["backbone"], first["backbone_sha256"]):
            raise UserError(
                f"--adapter {first_name} and --adapter {name} were trained on different backbones "
                f"('{first['backbone']}' and '{manifest['backbone']}'): serve them separately"
            )
    return first["backbone"]


def _check_backbone(name: str, folder: Path, manifest: dict, backbone: str, hashes: dict[str, str]) -> None:
    same = manifest["backbone_sha256"] == hashes if hashes else manifest["backbone"] == backbone
    if not same:
        raise UserError(f"--adapter {name}={folder}: trained on backbone '{manifest['backbone']}', not on '{backbone}' (weights differ)")


class MultiTaskModel:
    """Thread-safe: `predict_proba` switches the shared model to a task under a lock."""

    def __init__(self, backbone: str | None, adapters: dict[str, Path]):
        """`backbone` None: the one the adapters' manifests name."""
        manifests = {name: _read_manifest(name, Path(folder)) for name, folder in adapters.items()}
        backbone = backbone or shared_backbone(manifests)
        asset = resolve_backbone(backbone)
        family = family_of(asset)
        for name, manifest in manifests.items():
            _check_backbone(name, Path(adapters[name]), manifest, backbone, asset.hashes)
        self.backbone = backbone
        self.tasks = {
            name: Task(
                name,
                Path(adapters[name]),
                m["label_names"],
                m["strategy"],
                m["pooling"],
                m.get("temperature", 1.0),
                m.get("threshold"),
                family.load_preprocessor(Path(adapters[name]), m),
                bool(m.get("multi_label")),
                label_separator(m),
            )
            for name, m in manifests.items()
        }
        first, *others = self.tasks.values()
        base = build_classifier(asset, first.label_names, first.pooling)
        try:
            model = PeftModel.from_pretrained(base, str(first.folder), adapter_name=first.name)
            for task in others:
                _shape_heads_for(model, len(task.label_names))
                model.load_adapter(str(task.folder), adapter_name=task.name)
        except (ValueError, RuntimeError) as err:  # peft refuses adapters of another kind on the same model
            raise UserError(f"cannot serve these adapters together: {str(err).splitlines()[0]}") from None
        self.model = model.to(default_device()).eval()
        self._lock = threading.Lock()

    def predict_proba(self, task: str, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        spec = self.tasks[task]
        with self._lock:
            self.model.set_adapter(spec.name)
            config = self.model.get_base_model().config
            config.pooling, config.calibration_temperature = spec.pooling, spec.temperature  # read by the forward pass, per task
            config.problem_type = MULTI_LABEL if spec.multi_label else None  # softmax or a sigmoid per label
            features = spec.preprocessor.encode(texts)
            return predict_proba(self.model, features, spec.preprocessor.collate, spec.preprocessor.length_of, batch_size)


def _shape_heads_for(model: PeftModel, num_labels: int) -> None:
    """Give the head template this task's number of classes before its adapter loads.

    peft copies `ModulesToSaveWrapper.original_module` for each new adapter and then loads the
    adapter's saved head into the copy, so the template must have the task's shape. The template
    itself is never run: only adapters' own heads are (adapters are never disabled here).
    """
    base = model.get_base_model()
    for name in base.head_modules:
        wrapper = getattr(base, name)
        template = wrapper.original_module
        if isinstance(template, nn.Linear) and template.out_features != num_labels:
            wrapper.original_module = nn.Linear(template.in_features, num_labels).to(template.weight.device)
