"""Writing results so that an interrupted run never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from transferlab import faults

RESULTS = "results.json"  # a run folder's whole record, written last: its presence marks the run complete
CONFIG = "config.yaml"  # the resolved config, written first
MODEL_DIR = "model"  # where a run folder keeps its trained model
MANIFEST = "transferlab.json"  # an exported model's record: what it is, what it was trained on, how to read its inputs
LABEL_ISSUES = "label_issues.csv"  # the examples cleanlab flags, most likely mislabelled first
# What `export` writes; `train --export-format` and `auto --export-format` put each but hf in a run folder's DIR/<format>
EXPORT_FORMATS = ("hf", "onnx", "onnx-int8", "sentence-transformers")


def label_separator(manifest: dict) -> str:
    """How a multi-label model joins its labels into one cell: its training data's separator, ";" when the labels
    came as one 0/1 column each."""
    return manifest.get("label_separator") or ";"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        faults.reached(f"write:{path.name}")
        os.replace(tmp, path)
        _fsync_directory(path.parent)  # the rename itself survives a power cut
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_write_yaml(path: Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def publish_directory(staging: Path, final: Path) -> None:
    """Move a fully written folder into place; an older folder of that name is replaced."""
    final = Path(final)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
    if final.exists():
        backup = final.with_name(f".{final.name}.old")
        shutil.rmtree(backup, ignore_errors=True)  # left by a publish interrupted between its two renames
        os.replace(final, backup)
        os.replace(staging, final)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(staging, final)


@contextlib.contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """A fresh hidden folder beside `final` to write into: moved into place when the block ends, removed when it
    fails, so a half-written folder never looks complete."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield staging
        publish_directory(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
