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
optional ``uncertainty`` (the distilled teacher-spread output: units, range, source);
``preprocessing`` (crop, normalisation, target spacing, padding divisor); ``inference``
(whole-volume limit, tile, overlap, TensorRT optimisation profile); ``postprocessing``;
``source`` (student card summary and hashes, teacher identity); ``parity`` (figures measured
at export); ``engines``; ``files`` (sha256 and size of every file but the manifest itself).

Opening a package verifies the format version and every hash and refuses anything else with
an error that says what to do. ONNX external-data files have had path-traversal CVEs, so the
ONNX must be a single file, and every path in the manifest must stay inside the folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from distill import __version__
from distill.core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from distill.core.hashing import canonical_hash, file_sha256
from distill.core.jsonfile import read_json_object
from distill.data.conventions import REGIONS, LabelConvention, get_convention
from distill.data.discovery import MODALITY_ALIASES
from distill.data.preprocess import PreprocessConfig
from distill.package.manifest import (
    FORMAT_VERSION,
    PACKAGE_FORMAT,
    EngineEntry,
    FileEntry,
    InputChannel,
    LabelsSection,
    Manifest,
    PackageError,
    PreprocessingSection,
)
from distill.package.onnx_external import MalformedProtobuf, external_tensor_names
from distill.package.settings import InferenceSettings, PostprocessConfig, default_inference_settings

MANIFEST_NAME = "model.json"
# sha256 of the manifest's canonical JSON: an edited model.json (new thresholds, a changed
# tile) is refused instead of silently changing what the package does.
MANIFEST_HASH_NAME = "model.json.sha256"
ONNX_NAME = "model.onnx"
WEIGHTS_NAME = "model.pt"
ENGINES_DIR = "engines"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
#: The second ONNX output of packages whose student has the distilled-uncertainty head.
UNCERTAINTY_NAME = "uncertainty"
REQUIRED_FILES = (ONNX_NAME, WEIGHTS_NAME)


# ---------------------------------------------------------------------------------------------
# Sections built from Distill's own settings


def preprocessing_section(
    config: PreprocessConfig, normalisation: str = "zscore_in_brain_mask"
) -> PreprocessingSection:
    """The manifest's ``preprocessing``: what :func:`distill.data.preprocess.preprocess` does, spelled out."""
    return PreprocessingSection(
        crop="bounding box of voxels non-zero in any channel (the brain)", normalisation=normalisation,
        target_spacing=tuple(config.target_spacing) if config.target_spacing else None,
        image_order=config.image_order, divisor=config.divisor,
        padding="zeros, split evenly before and after, up to a multiple of the divisor",
    )  # fmt: skip


def labels_section(convention: LabelConvention) -> LabelsSection:
    """The manifest's ``labels``: the default output convention and its legend."""
    return LabelsSection(
        convention=convention.name,
        legend={"0": "background", **{str(k): v for k, v in sorted(convention.labels.items())}},
        regions={region: list(values) for region, values in convention.regions.items()},
        description=convention.description,
    )


def inputs_section(modalities: Sequence[str]) -> tuple[InputChannel, ...]:
    """The manifest's ``inputs``: channel index, canonical modality and accepted aliases, in order."""
    return tuple(InputChannel(i, m, tuple(MODALITY_ALIASES.get(m, (m,)))) for i, m in enumerate(modalities))


# ---------------------------------------------------------------------------------------------
# File listing


def list_package_files(root: Path) -> dict[str, FileEntry]:
    """``relative posix path -> FileEntry(sha256, bytes)`` for every file under ``root`` but the manifest."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative in (MANIFEST_NAME, MANIFEST_HASH_NAME) or path.name.startswith("."):
            continue
        files[relative] = FileEntry(file_sha256(path), path.stat().st_size)
    return files


def write_manifest(root: Path, manifest: Manifest) -> Manifest:
    """Hash every file under ``root`` into ``manifest.files``; write ``model.json`` and the hash of
    its canonical content (``model.json.sha256``), each atomically.

    The only writer of a manifest: a command that legitimately changes a package goes through
    here, so the recorded hash follows; a hand edit does not, and :meth:`ModelPackage.open`
    refuses it.
    """
    complete = replace(manifest, files=list_package_files(root))
    document = complete.to_dict()
    atomic_write_json(root / MANIFEST_NAME, document)
    atomic_write_text(root / MANIFEST_HASH_NAME, canonical_hash(document) + "\n")
    return complete


def check_manifest_hash(document: Mapping[str, Any], root: Path) -> None:
    """Refuse a manifest whose canonical content differs from the hash written beside it."""
    path = root / MANIFEST_HASH_NAME
    try:
        recorded = path.read_text().strip()
    except FileNotFoundError:
        raise PackageError(f"{path}: missing; the package is incomplete or predates integrity checks: "
                           "re-export it with `distill export`") from None  # fmt: skip
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path}: unreadable ({exc}); re-export the package") from exc
    if recorded != canonical_hash(document):
        raise PackageError(
            f"{root / MANIFEST_NAME}: edited after export (its content no longer matches {MANIFEST_HASH_NAME}); "
            "restore the original, or change thresholds and settings by re-exporting "
            "from the student's run folder (`distill export RUN_DIR PACKAGE --thresholds WT,TC,ET --overwrite`)"
        )


def safe_relative_path(root: Path, name: str) -> Path:
    """``root / name`` for a manifest entry, refusing absolute paths and ``..`` (no escaping the folder)."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in name:
        raise PackageError(
            f"{root / MANIFEST_NAME}: file entry {name!r} points outside the package; "
            "refusing it (re-export the package)"
        )
    return root.joinpath(*pure.parts)


# ---------------------------------------------------------------------------------------------
# The opened package


class ModelPackage:
    """A verified package folder; open with :meth:`open`. ``manifest`` is the typed ``model.json``."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> ModelPackage:
        """Read and check ``model.json``; with ``verify`` also the file list and every sha256.

        Raises:
            PackageError: not a package, a newer format, a malformed or edited manifest, a
                missing, unlisted-required, altered or escaping file, or an ONNX that uses
                external data.
        """
        root = Path(path)
        document = read_manifest(root)
        check_format(document, root)
        # values first: an impossible edit gets its specific message, a plausible one the hash's
        package = cls(root, Manifest.from_dict(document, source=str(root / MANIFEST_NAME)))
        check_manifest_hash(document, root)
        if verify:
            package.verify_files()
            check_single_file_onnx(package.onnx_path)
        return package

    def verify_files(self) -> None:
        """Every listed file exists with its recorded sha256, and the required ones are listed."""
        files = self.manifest.files
        missing_required = [name for name in REQUIRED_FILES if name not in files]
        if missing_required:
            raise PackageError(
                f"{self.root}: manifest does not list {missing_required}; the package is damaged, re-export it"
            )
        for name, entry in files.items():
            path = safe_relative_path(self.root, name)
            if not path.is_file():
                raise PackageError(
                    f"{path}: missing from the package (listed in model.json); copy the whole folder or re-export it"
                )
            actual = file_sha256(path)
            if actual != entry.sha256:
                raise PackageError(
                    f"{path}: sha256 {actual[:16]}... does not match the {entry.sha256[:16]}... recorded at export; "
                    "the file was altered or damaged: restore the original package or re-export it"
                )

    # -- files

    @property
    def onnx_path(self) -> Path:
        return safe_relative_path(self.root, self.manifest.model.onnx)

    @property
    def weights_path(self) -> Path:
        return safe_relative_path(self.root, self.manifest.model.weights)

    @property
    def onnx_sha256(self) -> str:
        return self.manifest.files[self.manifest.model.onnx].sha256

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
        return dict(self.manifest.model.student)

    @property
    def parameters(self) -> int:
        return self.manifest.model.parameters

    @property
    def modalities(self) -> tuple[str, ...]:
        """Canonical modality of each input channel, in channel order."""
        return tuple(channel.modality for channel in self.manifest.inputs)

    @property
    def aliases(self) -> dict[str, tuple[str, ...]]:
        """Canonical modality -> names accepted for it (file suffixes, request fields)."""
        return {channel.modality: channel.aliases for channel in self.manifest.inputs}

    @property
    def output_kind(self) -> str:
        return self.manifest.output.kind

    @property
    def regions(self) -> tuple[str, ...]:
        return self.manifest.output.regions

    @property
    def has_uncertainty(self) -> bool:
        """Whether the package carries the distilled-uncertainty output (``model.json``'s ``uncertainty``)."""
        return self.manifest.uncertainty is not None

    @property
    def thresholds(self) -> tuple[float, ...]:
        """Probability threshold per output region, in output order."""
        return tuple(self.manifest.output.thresholds[r] for r in self.regions)

    @property
    def convention(self) -> LabelConvention:
        return get_convention(self.manifest.labels.convention)

    # -- processing settings

    @property
    def preprocess_config(self) -> PreprocessConfig:
        section = self.manifest.preprocessing
        return PreprocessConfig(
            target_spacing=section.target_spacing, divisor=section.divisor, image_order=section.image_order
        )

    @property
    def postprocess_config(self) -> PostprocessConfig:
        return self.manifest.postprocessing

    @property
    def inference(self) -> InferenceSettings:
        return self.manifest.inference

    # -- engines

    @property
    def engines(self) -> list[EngineEntry]:
        return list(self.manifest.engines)

    def add_engine(self, name: str, data: bytes, entry: EngineEntry) -> Path:
        """Store an engine inside the package and re-hash the manifest (export only: the folder must be writable)."""
        path = safe_relative_path(self.root, f"{ENGINES_DIR}/{name}")
        atomic_write_bytes(path, data)
        engines = tuple(e for e in self.manifest.engines if e.file != entry.file) + (entry,)
        self.manifest = write_manifest(self.root, replace(self.manifest, engines=engines))
        return path

    def size_bytes(self) -> int:
        """Bytes on disk of every file of the package, the manifest included."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


def read_manifest(root: Path) -> dict[str, Any]:
    """``model.json`` as a plain dict (not yet checked beyond being a JSON object)."""
    if not root.is_dir():
        raise PackageError(f"{root}: not a folder; a model package is a folder made by `distill export`")
    if not (root / MANIFEST_NAME).is_file():
        raise PackageError(
            f"{root}: no {MANIFEST_NAME}; this is not a Distill model package (make one with `distill export`)"
        )
    return read_json_object(root / MANIFEST_NAME, "manifest", "the package is damaged, re-export it", PackageError)
def check_format(manifest: Mapping[str, Any], root: Path) -> None:
    """Refuse another format and any format version this Distill does not read."""
    path = root / MANIFEST_NAME
    if manifest.get("format") != PACKAGE_FORMAT:
        raise PackageError(
            f"{path}: format {manifest.get('format')!r} is not {PACKAGE_FORMAT!r}; not a Distill model package"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise PackageError(f"{path}: invalid format_version {version!r}; the package is damaged, re-export it")
    if version > FORMAT_VERSION:
        raise PackageError(
            f"{path}: package format {version} was written by a newer Distill{_version_note(manifest)}; "
            f"this Distill {__version__} reads format {FORMAT_VERSION}: upgrade Distill, "
            "or re-export the student with this version"
        )


def _version_note(manifest: Mapping[str, Any]) -> str:
    version = manifest.get("toolkit_version")
    return f" ({version})" if version else ""


def check_single_file_onnx(path: Path) -> None:
    """Refuse an ONNX whose tensors live in external files (path-traversal risk, unhashed data).

    Reads the protobuf directly (:mod:`distill.package.onnx_external`), so serving needs no ``onnx``.
    """
    try:
        external = external_tensor_names(path.read_bytes())
    except (OSError, MalformedProtobuf) as exc:
        raise PackageError(f"{path}: not a readable ONNX model ({exc}); re-export the package") from exc
    if external:
        raise PackageError(
            f"{path}: {len(external)} tensors refer to external data files (e.g. {external[0]!r}); "
            "Distill packages hold "
            "single-file ONNX models only: re-export the package"
        )


__all__ = [
    "ENGINES_DIR", "FORMAT_VERSION", "INPUT_NAME", "MANIFEST_NAME", "ONNX_NAME", "OUTPUT_NAME", "PACKAGE_FORMAT",
    "REGIONS", "REQUIRED_FILES", "UNCERTAINTY_NAME", "WEIGHTS_NAME", "EngineEntry", "FileEntry", "InferenceSettings",
    "Manifest",
    "ModelPackage", "PackageError", "PostprocessConfig", "check_format", "check_single_file_onnx",
    "default_inference_settings", "inputs_section", "labels_section", "list_package_files", "preprocessing_section",
    "read_manifest", "safe_relative_path", "write_manifest",
]  # fmt: skip
