"""A GGUF decoder dequantised once and cached as a plain Hugging Face folder (safetensors + tokenizer).

transformers reads GGUF by dequantising every tensor to fp32 (about 20 s for SmolLM2-135M) and will not
`save_pretrained` a model it loaded that way, so the state is copied into a fresh model of the same class
built from the config without its `quantization_config`. The folder is written in a staging folder and
renamed into place (an interrupted conversion leaves nothing that looks complete), and a stamp file records
the GGUF's sha256 and every written file's sha256: a folder whose files no longer match is rebuilt.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from transferlab.errors import MissingAssetError
from transferlab.hashing import sha256_of
from transferlab.runio import atomic_write_json, staged_directory

STAMP = "transferlab-cache.json"
CACHE_FORMAT = 1


def read_valid_cache(folder: Path, source_sha256: str) -> dict[str, str] | None:
    """{file: sha256} of a complete cache made from this source, or None when it is missing, stale or corrupt."""
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("format") != CACHE_FORMAT or stamp.get("source_sha256") != source_sha256:
        return None
    files = stamp.get("files")
    if not isinstance(files, dict) or not files:
        return None
    for name, expected in files.items():
        path = folder / name
        if not path.is_file() or sha256_of(path) != expected:
            print(f"transferlab: cached {path} is corrupt (sha256 mismatch): rebuilding it", file=sys.stderr)
            return None
    return dict(files)


def cached_build(folder: Path, source_sha256: str, build: Callable[[Path], None], message: str) -> dict[str, str]:
    """Reuse `folder` if its stamp and hashes hold; otherwise `build(staging)` and publish it atomically.

    Returns {file: sha256} of the files in the folder (the stamp itself excluded).
    """
    files = read_valid_cache(folder, source_sha256)
    if files is not None:
        return files
    print(message, file=sys.stderr, flush=True)
    started = time.perf_counter()
    with staged_directory(folder) as staging:
        build(staging)
        files = {p.name: sha256_of(p) for p in sorted(staging.iterdir()) if p.is_file() and p.name != STAMP}
        atomic_write_json(staging / STAMP, {"format": CACHE_FORMAT, "source_sha256": source_sha256, "files": files})
    print(f"transferlab: cached in {folder} ({time.perf_counter() - started:.0f}s; later loads reuse it)", file=sys.stderr, flush=True)
    return files


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise `gguf` into `target` as safetensors, config and tokenizer (padding on the right, a pad id set)."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise MissingAssetError(
            "package 'gguf' is not installed: pip install --no-deps gguf==0.19.0 (pinned in requirements/assets-large.txt)"
        )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    config.pad_token_id = tokenizer.pad_token_id
    config.architectures = [type(loaded).__name__]
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def cached_gguf_folder(gguf: Path, gguf_sha256: str, folder: Path) -> tuple[Path, dict[str, str]]:
    """The cached Hugging Face folder for this GGUF, converting it first if needed; and its files' hashes."""
    message = f"transferlab: dequantising {gguf.name} into {folder} (once, about 30 s)"
    files = cached_build(folder, gguf_sha256, lambda staging: convert_gguf(gguf, staging), message)
    return folder, {name: sha for name, sha in files.items() if name.endswith(".safetensors")}
