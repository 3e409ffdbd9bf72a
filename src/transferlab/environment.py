"""What a run needs to be reproduced: package versions, machine, seeds."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

from transferlab.distributed import state

RECORDED_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "accelerate",
    "scikit-learn",
    "numpy",
    "pandas",
    "safetensors",
    "transferlab",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def describe_environment() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "processes": state().num_processes,  # more than one under `accelerate launch`
        "packages": package_versions(),
    }
