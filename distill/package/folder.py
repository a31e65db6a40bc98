"""The model package: a self-describing folder that carries a student with everything around it.

nnU-Net's maintainers declined ONNX export because the bare network is useless without its
preprocessing, patching and label mapping (nnU-Net issue #1730). A Distill package therefore
holds the network *and* those rules, and this module is the only place that knows its layout::

    <package>/
        model.json                     the manifest (below); lists the sha256 of every other file
        model.onnx                     one self-contained ONNX file (no external data), opset 17
        model.pt                       the same weights as a plain torch state dict (torch backend)
        engines/                       optional TensorRT engines, one per GPU x TensorRT x precision
            model.sm89.trt10.3.0.fp16.engine

Manifest (``model.json``) sections: ``format``/``format_version``/``toolkit_version``;
``model`` (file names, tensor names and layouts, exporter, opset, student config, parameters,
MACs); ``inputs`` (channels in order: modality and accepted file-name aliases); ``output``
(kind, region names, thresholds); ``labels`` (default convention and its legend);
``preprocessing`` (crop, normalisation, target spacing, padding divisor); ``inference``
(whole-volume limit, tile, overlap, TensorRT optimisation profile); ``postprocessing``;
``source`` (student card summary and hashes, teacher identity); ``parity`` (figures measured
at export); ``engines``; ``files`` (sha256 and size of every file but the manifest itself).

Opening a package verifies the format version and every hash and refuses anything else with
an error that says what to do. ONNX external-data files have had path-traversal CVEs, so the
ONNX must be a single file, and every path in the manifest must stay inside the folder.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from distill import __version__
from distill.core.atomic import atomic_write_bytes, atomic_write_json
from distill.data.conventions import REGIONS, LabelConvention, get_convention
from distill.data.discovery import MODALITY_ALIASES
from distill.data.preprocess import PreprocessConfig
from distill.errors import DistillError
from distill.package.settings import PostprocessConfig

PACKAGE_FORMAT = "distill-model-package"
FORMAT_VERSION = 1
MANIFEST_NAME = "model.json"
ONNX_NAME = "model.onnx"
WEIGHTS_NAME = "model.pt"
ENGINES_DIR = "engines"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
REQUIRED_FILES = (ONNX_NAME, WEIGHTS_NAME)


class PackageError(DistillError):
    """A model package is missing, damaged, altered, or from a newer Distill."""


# ---------------------------------------------------------------------------------------------
# Settings stored in the manifest


@dataclass(frozen=True)
class InferenceSettings:
    """How the predictor runs the network over a preprocessed volume.

    Attributes:
        whole_volume_max_voxels: volumes up to this many voxels run in one pass; larger ones
            are tiled (a whole padded 1 mm BraTS volume, 240x240x160, is ~9.2 M voxels).
        tile: sliding-window tile ``(X, Y, Z)``, multiples of the network divisor.
        overlap: fraction of a tile shared with its neighbour.
        profile_min, profile_opt, profile_max: TensorRT optimisation profile, full input
            shapes ``(B, C, X, Y, Z)``; the engine accepts every shape between min and max.
    """

    whole_volume_max_voxels: int
    tile: tuple[int, int, int]
    overlap: float
    profile_min: tuple[int, ...]
    profile_opt: tuple[int, ...]
    profile_max: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "whole_volume_max_voxels": self.whole_volume_max_voxels,
            "tile": list(self.tile),
            "overlap": self.overlap,
            "tensorrt_profile": {"min": list(self.profile_min), "opt": list(self.profile_opt), "max": list(self.profile_max)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceSettings:
        profile = data["tensorrt_profile"]
        return cls(
            whole_volume_max_voxels=int(data["whole_volume_max_voxels"]),
            tile=tuple(int(n) for n in data["tile"]),  # type: ignore[arg-type]
            overlap=float(data["overlap"]),
            profile_min=tuple(int(n) for n in profile["min"]),
            profile_opt=tuple(int(n) for n in profile["opt"]),
            profile_max=tuple(int(n) for n in profile["max"]),
        )


def default_inference_settings(in_channels: int, divisor: int, max_edge: int = 256, tile_edge: int = 128) -> InferenceSettings:
    """Whole volumes up to ``max_edge``³ voxels, ``tile_edge``³ tiles, and a profile from 2 divisors to ``max_edge``.

    The profile's opt shape is a padded, brain-cropped 1 mm BraTS volume (~160x192x160 after
    the brain crop), the shape the engine will see most.
    """

    def up(n: int) -> int:
        return int(math.ceil(n / divisor) * divisor)

    tile = (up(tile_edge),) * 3
    return InferenceSettings(
        whole_volume_max_voxels=max_edge**3,
        tile=tile,  # type: ignore[arg-type]
        overlap=0.5,
        profile_min=(1, in_channels, *(up(2 * divisor),) * 3),
        profile_opt=(1, in_channels, up(160), up(192), up(160)),
        profile_max=(1, in_channels, *(up(max_edge),) * 3),
    )


def preprocessing_section(config: PreprocessConfig, normalisation: str = "zscore_in_brain_mask") -> dict[str, Any]:
    """The manifest's ``preprocessing``: what :func:`distill.data.preprocess.preprocess` does, spelled out."""
    return {
        "crop": "bounding box of voxels non-zero in any channel (the brain)",
        "normalisation": normalisation,
        "target_spacing": list(config.target_spacing) if config.target_spacing else None,
        "image_order": config.image_order,
        "divisor": config.divisor,
        "padding": "zeros, split evenly before and after, up to a multiple of the divisor",
    }


def labels_section(convention: LabelConvention) -> dict[str, Any]:
    """The manifest's ``labels``: the default output convention and its legend."""
    return {
        "convention": convention.name,
        "legend": {"0": "background", **{str(k): v for k, v in sorted(convention.labels.items())}},
        "regions": {region: list(values) for region, values in convention.regions.items()},
        "description": convention.description,
    }


def inputs_section(modalities: Sequence[str]) -> list[dict[str, Any]]:
    """The manifest's ``inputs``: channel index, canonical modality and accepted aliases, in order."""
    return [{"index": i, "modality": m, "aliases": list(MODALITY_ALIASES.get(m, (m,)))} for i, m in enumerate(modalities)]


# ---------------------------------------------------------------------------------------------
# Hashing and file listing


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_package_files(root: Path) -> dict[str, dict[str, Any]]:
    """``relative posix path -> {"sha256", "bytes"}`` for every file under ``root`` but the manifest."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative == MANIFEST_NAME or path.name.startswith("."):
            continue
        files[relative] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def write_manifest(root: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Hash every file under ``root`` into ``manifest["files"]`` and write ``model.json`` atomically."""
    complete = {**manifest, "files": list_package_files(root)}
    atomic_write_json(root / MANIFEST_NAME, complete)
    return complete


def safe_relative_path(root: Path, name: str) -> Path:
    """``root / name`` for a manifest entry, refusing absolute paths and ``..`` (no escaping the folder)."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in name:
        raise PackageError(f"{root / MANIFEST_NAME}: file entry {name!r} points outside the package; refusing it (re-export the package)")
    return root.joinpath(*pure.parts)


# ---------------------------------------------------------------------------------------------
# The opened package


@dataclass(frozen=True)
class EngineEntry:
    """One TensorRT engine of a package (see :mod:`distill.export.tensorrt_build` for the naming)."""

    file: str
    compute_capability: str
    tensorrt_version: str
    precision: str
    onnx_sha256: str
    profile: dict[str, list[int]]
    parity: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelPackage:
    """A verified package folder; open with :meth:`open`. Read-only view of ``model.json``."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> ModelPackage:
        """Read ``model.json``; with ``verify`` check format, version, file list and every sha256.

        Raises:
            PackageError: not a package, a newer format, a missing, unlisted-required, altered
                or escaping file, or an ONNX that uses external data.
        """
        root = Path(path)
        manifest = read_manifest(root)
        check_format(manifest, root)
        package = cls(root, manifest)
        if verify:
            package.verify_files()
            check_single_file_onnx(package.onnx_path)
        return package

    def verify_files(self) -> None:
        """Every listed file exists with its recorded sha256, and the required ones are listed."""
        files = self.manifest.get("files")
        if not isinstance(files, dict):
            raise PackageError(f"{self.root / MANIFEST_NAME}: no file list; the package is damaged, re-export it")
        missing_required = [name for name in REQUIRED_FILES if name not in files]
        if missing_required:
            raise PackageError(f"{self.root}: manifest does not list {missing_required}; the package is damaged, re-export it")
        for name, entry in files.items():
            path = safe_relative_path(self.root, name)
            if not path.is_file():
                raise PackageError(f"{path}: missing from the package (listed in model.json); copy the whole folder or re-export it")
            actual = sha256_file(path)
            if actual != entry.get("sha256"):
                raise PackageError(
                    f"{path}: sha256 {actual[:16]}... does not match the {str(entry.get('sha256'))[:16]}... recorded at export; "
                    "the file was altered or damaged: restore the original package or re-export it"
                )

    # -- files

    @property
    def onnx_path(self) -> Path:
        return safe_relative_path(self.root, self.manifest["model"]["onnx"])

    @property
    def weights_path(self) -> Path:
        return safe_relative_path(self.root, self.manifest["model"]["weights"])

    @property
    def onnx_sha256(self) -> str:
        return self.manifest["files"][self.manifest["model"]["onnx"]]["sha256"]

    def load_student(self):
        """The student ``torch.nn.Module`` in eval mode with the package's weights (``weights_only`` load)."""
        import torch

        from distill.students import build_student

        model = build_student(self.student_config)
        model.load_state_dict(torch.load(self.weights_path, map_location="cpu", weights_only=True))
        return model.eval()

    # -- model and channels

    @property
    def student_config(self) -> dict[str, Any]:
        return dict(self.manifest["model"]["student"])

    @property
    def modalities(self) -> tuple[str, ...]:
        """Canonical modality of each input channel, in channel order."""
        return tuple(channel["modality"] for channel in self.manifest["inputs"])

    @property
    def aliases(self) -> dict[str, tuple[str, ...]]:
        """Canonical modality -> names accepted for it (file suffixes, request fields)."""
        return {channel["modality"]: tuple(channel["aliases"]) for channel in self.manifest["inputs"]}

    @property
    def output_kind(self) -> str:
        return self.manifest["output"]["kind"]

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self.manifest["output"]["regions"])

    @property
    def thresholds(self) -> tuple[float, ...]:
        """Probability threshold per output region, in output order."""
        values = self.manifest["output"]["thresholds"]
        return tuple(float(values[r]) for r in self.regions)

    @property
    def convention(self) -> LabelConvention:
        return get_convention(self.manifest["labels"]["convention"])

    # -- processing settings

    @property
    def preprocess_config(self) -> PreprocessConfig:
        section = self.manifest["preprocessing"]
        spacing = section["target_spacing"]
        return PreprocessConfig(
            target_spacing=tuple(float(s) for s in spacing) if spacing else None,  # type: ignore[arg-type]
            divisor=int(section["divisor"]),
            image_order=int(section["image_order"]),
        )

    @property
    def postprocess_config(self) -> PostprocessConfig:
        section = dict(self.manifest["postprocessing"])
        return PostprocessConfig(
            enforce_hierarchy=bool(section["enforce_hierarchy"]),
            min_size=dict(section["min_size"]),
            min_size_unit=section["min_size_unit"],
            keep_largest=tuple(section["keep_largest"]),
            connectivity=int(section["connectivity"]),
        )

    @property
    def inference(self) -> InferenceSettings:
        return InferenceSettings.from_dict(self.manifest["inference"])

    # -- engines

    @property
    def engines(self) -> list[EngineEntry]:
        return [EngineEntry(**entry) for entry in self.manifest.get("engines", [])]

    def add_engine(self, name: str, data: bytes, entry: EngineEntry) -> Path:
        """Store an engine inside the package and re-hash the manifest (the folder must be writable)."""
        path = safe_relative_path(self.root, f"{ENGINES_DIR}/{name}")
        atomic_write_bytes(path, data)
        engines = [e for e in self.manifest.get("engines", []) if e["file"] != entry.file] + [entry.to_dict()]
        self.manifest = write_manifest(self.root, {**self.manifest, "engines": engines})
        return path

    def size_bytes(self) -> int:
        """Bytes on disk of every file of the package, the manifest included."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise PackageError(f"{root}: not a folder; a model package is a folder made by `distill export`")
    if not path.is_file():
        raise PackageError(f"{root}: no {MANIFEST_NAME}; this is not a Distill model package (make one with `distill export`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path}: unreadable manifest ({exc}); the package is damaged, re-export it") from exc
    if not isinstance(manifest, dict):
        raise PackageError(f"{path}: the manifest is not a JSON object; the package is damaged, re-export it")
    return manifest


def check_format(manifest: Mapping[str, Any], root: Path) -> None:
    """Refuse another format and any format version this Distill does not read."""
    path = root / MANIFEST_NAME
    if manifest.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{path}: format {manifest.get('format')!r} is not {PACKAGE_FORMAT!r}; not a Distill model package")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise PackageError(f"{path}: invalid format_version {version!r}; the package is damaged, re-export it")
    if version > FORMAT_VERSION:
        raise PackageError(
            f"{path}: package format {version} was written by a newer Distill{_version_note(manifest)}; "
            f"this Distill {__version__} reads format {FORMAT_VERSION}: upgrade Distill, or re-export the student with this version"
        )


def _version_note(manifest: Mapping[str, Any]) -> str:
    version = manifest.get("toolkit_version")
    return f" ({version})" if version else ""


def check_single_file_onnx(path: Path) -> None:
    """Refuse an ONNX whose tensors live in external files (path-traversal risk, unhashed data)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in model.graph.initializer if uses_external_data(t)]
    if external:
        raise PackageError(
            f"{path}: {len(external)} tensors refer to external data files (e.g. {external[0]!r}); Distill packages hold "
            "single-file ONNX models only: re-export the package"
        )


__all__ = [
    "ENGINES_DIR", "FORMAT_VERSION", "INPUT_NAME", "MANIFEST_NAME", "ONNX_NAME", "OUTPUT_NAME", "PACKAGE_FORMAT",
    "REGIONS", "WEIGHTS_NAME", "EngineEntry", "InferenceSettings", "ModelPackage", "PackageError",
    "check_format", "check_single_file_onnx", "default_inference_settings", "inputs_section", "labels_section",
    "list_package_files", "preprocessing_section", "read_manifest", "safe_relative_path", "sha256_bytes",
    "sha256_file", "write_manifest",
]  # fmt: skip
