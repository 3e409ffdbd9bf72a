"""Tasks served by onnxruntime: one exported ONNX classifier per task, no torch in the process.

Each task is a folder written by `transferlab export` (fp32 or int8); every graph holds its whole model, so tasks
need not share a backbone. onnxruntime sessions may run concurrently, so no lock is held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.deploy import OnnxClassifier
from transferlab.errors import UserError
from transferlab.runio import label_separator


@dataclass
class OnnxTask:
    name: str
    label_names: list[str]
    strategy: str
    threshold: float | list[float] | None
    classifier: OnnxClassifier
    multi_label: bool = False
    label_separator: str = ";"


class OnnxTasks:
    """The served-model interface of `serve/app.py` over ONNX exports."""

    def __init__(self, folders: dict[str, Path]):
        self.tasks: dict[str, OnnxTask] = {}
        for name, folder in folders.items():
            if not Path(folder).is_dir():
                raise UserError(f"--model {name}={folder}: no such folder")
            classifier = OnnxClassifier(Path(folder))
            if classifier.modality != "text":
                raise UserError(f"--model {name}={folder}: an image classifier; serve answers texts")
            self.tasks[name] = OnnxTask(
                name,
                classifier.label_names,
                classifier.manifest["strategy"],
                classifier.threshold,
                classifier,
                classifier.multi_label,
                label_separator(classifier.manifest),
            )
        self.backbone = ", ".join(sorted({task.classifier.manifest["backbone"] for task in self.tasks.values()}))

    def predict_proba(self, task: str, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self.tasks[task].classifier.predict_proba(texts, batch_size)
