"""``model.json``, the package manifest, as typed sections: written by export, read by inference.

Every section is a frozen dataclass with ``to_dict`` (its JSON form) and ``from_dict`` (parse
and check). :meth:`Manifest.from_dict` refuses a manifest that would run wrongly rather than
fail: thresholds outside (0, 1), regions or a convention Distill does not know, channel
indices out of order, a non-positive divisor or spacing, tiles that are not multiples of the
divisor. Each refusal names the file and the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from distill.core.outputs import OUTPUT_KINDS
from distill.data.conventions import REGIONS, get_convention
from distill.errors import DistillError
from distill.package.settings import InferenceSettings, PostprocessConfig

PACKAGE_FORMAT = "distill-model-package"
FORMAT_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")


class PackageError(DistillError):
    """A model package is missing, damaged, altered, or from a newer Distill."""


class _Checker:
    """Field access that names the file and the field path in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> PackageError:
        return PackageError(f"{self.source}: {where}: {problem}; the package is damaged or was edited, re-export it")

    def section(self, data: Mapping[str, Any], key: str, where: str = "") -> Any:
        path = f"{where}.{key}" if where else key
        if not isinstance(data, Mapping) or key not in data:
            raise self.fail(path, "missing")
        return data[key]

    def parse(self, where: str, build: Callable[[], T]) -> T:
        """``build()``, with the ``KeyError`` / ``TypeError`` / ``ValueError`` of a malformed field named."""
        try:
            return build()
        except PackageError:
            raise
        except KeyError as exc:
            raise self.fail(where, f"missing field {exc}") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise self.fail(where, str(exc)) from exc


@dataclass(frozen=True)
class TensorSpec:
    name: str
    layout: str
    dtype: str
    values: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ModelSection:
    """The network: file names, tensor names and layouts, how it was exported, what it is."""

    onnx: str
    weights: str
    input: TensorSpec
    output: TensorSpec
    dynamic_axes: tuple[str, ...]
    exporter: str
    opset: int
    simplified: bool
    torch_version: str
    onnx_version: str
    student: dict[str, Any]
    parameters: int
    macs_128: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input": self.input.to_dict(), "output": self.output.to_dict(),
                "dynamic_axes": list(self.dynamic_axes)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSection:
        return cls(**{**data, "input": TensorSpec(**data["input"]), "output": TensorSpec(**data["output"]),
                      "dynamic_axes": tuple(data["dynamic_axes"]), "opset": int(data["opset"]),
                      "parameters": int(data["parameters"]), "macs_128": int(data["macs_128"])})  # fmt: skip


@dataclass(frozen=True)
class InputChannel:
    """One input channel: its index, canonical modality and the names accepted for it."""

    index: int
    modality: str
    aliases: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "modality": self.modality, "aliases": list(self.aliases)}


@dataclass(frozen=True)
class OutputSection:
    """What the logits mean: their kind, region names in channel order, and a threshold per region.

    ``threshold_source`` says where the thresholds came from: ``"explicit"`` (given to export)
    or ``"student card calibration"`` (calibrated on the validation cases at training);
    ``None`` (not written) for the 0.5 default and for packages written before the field
    existed, so their manifests round-trip unchanged.
    """

    kind: str
    regions: tuple[str, ...]
    thresholds: dict[str, float]
    threshold_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.kind, "regions": list(self.regions), "thresholds": dict(self.thresholds)}
        if self.threshold_source is not None:
            data["threshold_source"] = self.threshold_source
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutputSection:
        source = data.get("threshold_source")
        return cls(kind=data["kind"], regions=tuple(data["regions"]),
                   thresholds={str(k): float(v) for k, v in dict(data["thresholds"]).items()},
                   threshold_source=None if source is None else str(source))  # fmt: skip


#: What a package's distilled uncertainty map is, and what it is not (repeated in every manifest that has one).
UNCERTAINTY_MEANING = (
    "the student's prediction of how much the teacher ensemble's forward passes disagree on each region at each "
    "voxel (the standard deviation of their probabilities); high where the teacher's passes disagree, near 0 where "
    "they agree. It is not a calibrated probability that the segmentation is wrong: an ensemble that is confidently "
    "wrong has a spread near 0, and the map is 0 outside the brain's bounding box"
)
UNCERTAINTY_UNITS = "probability (standard deviation of probabilities)"
UNCERTAINTY_RANGE = (0.0, 0.5)


@dataclass(frozen=True)
class UncertaintySection:
    """The optional distilled-uncertainty output (students trained with ``uncertainty_head``).

    Attributes:
        output: the ONNX output (``uncertainty``, ``B,K,X,Y,Z`` float32).
        regions: region of each channel, the order of ``output.regions``.
        quantity, units, range: what the values are: the predicted per-region standard deviation of
            the teacher's per-pass probabilities, in probability units, within ``range`` ([0, 0.5]).
        source: whose spread the head learnt (the teacher cache: teacher, members, TTA, mode).
        passes: forward passes of the teacher that spread was taken over (e.g. 5 folds x 8 = 40),
            ``None`` when not known.
        parameters: the head's parameters (part of ``model.parameters``).
        meaning: what the map means and what it does not (:data:`UNCERTAINTY_MEANING`).
    """

    output: TensorSpec
    regions: tuple[str, ...]
    source: str
    parameters: int
    passes: int | None = None
    quantity: str = "predicted standard deviation of the teacher's per-pass probabilities, per region"
    units: str = UNCERTAINTY_UNITS
    range: tuple[float, float] = UNCERTAINTY_RANGE
    meaning: str = UNCERTAINTY_MEANING

    def to_dict(self) -> dict[str, Any]:
        data = {"output": self.output.to_dict(), "regions": list(self.regions), "quantity": self.quantity,
                "units": self.units, "range": list(self.range), "source": self.source, "passes": self.passes,
                "parameters": self.parameters, "meaning": self.meaning}  # fmt: skip
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UncertaintySection:
        passes = data.get("passes")
        low, high = (float(v) for v in data["range"])
        return cls(output=TensorSpec(**data["output"]), regions=tuple(str(r) for r in data["regions"]),
                   source=str(data["source"]), parameters=int(data["parameters"]),
                   passes=None if passes is None else int(passes), quantity=str(data["quantity"]),
                   units=str(data["units"]), range=(low, high), meaning=str(data["meaning"]))  # fmt: skip


@dataclass(frozen=True)
class LabelsSection:
    """The default label convention of the output map and its legend."""

    convention: str
    legend: dict[str, str]
    regions: dict[str, list[int]]
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PreprocessingSection:
    """What :func:`distill.data.preprocess.preprocess` must do before the network, spelled out."""

    crop: str
    normalisation: str
    target_spacing: tuple[float, ...] | None
    image_order: int
    divisor: int
    padding: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target_spacing": list(self.target_spacing) if self.target_spacing else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessingSection:
        spacing = data["target_spacing"]
        return cls(crop=str(data["crop"]), normalisation=str(data["normalisation"]),
                   target_spacing=tuple(float(s) for s in spacing) if spacing else None,
                   image_order=int(data["image_order"]), divisor=int(data["divisor"]),
                   padding=str(data["padding"]))  # fmt: skip


@dataclass(frozen=True)
class SourceSection:
    """Where the student came from: its card summary and hashes, and the teacher's identity."""

    student_card: dict[str, Any]
    student_card_sha256: str
    student_weights_sha256: str
    teacher: str | None
    teacher_identity_hash: str | None
    training_preprocessing: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EngineEntry:
    """One TensorRT engine of a package (see :mod:`distill.infer.tensorrt_runtime` for the naming).

    ``gpu_name``, ``rewrite_version`` and ``calibration_sha256`` (INT8 only) record the rest of
    the engine's key; packages written before they existed lack them (``None``), and
    :meth:`to_dict` writes them only when set, so such manifests round-trip unchanged.
    """

    file: str
    compute_capability: str
    tensorrt_version: str
    precision: str
    onnx_sha256: str
    profile: dict[str, list[int]]
    parity: dict[str, Any]
    gpu_name: str | None = None
    rewrite_version: int | None = None
    calibration_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        optional = ("gpu_name", "rewrite_version", "calibration_sha256")
        return {k: v for k, v in asdict(self).items() if k not in optional or v is not None}


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes}


def postprocess_to_dict(config: PostprocessConfig) -> dict[str, Any]:
    return {"enforce_hierarchy": config.enforce_hierarchy, "min_size": dict(config.min_size),
            "min_size_unit": config.min_size_unit, "keep_largest": list(config.keep_largest),
            "connectivity": config.connectivity}  # fmt: skip


def postprocess_from_dict(data: Mapping[str, Any]) -> PostprocessConfig:
    return PostprocessConfig(enforce_hierarchy=bool(data["enforce_hierarchy"]), min_size=dict(data["min_size"]),
                             min_size_unit=data["min_size_unit"], keep_largest=tuple(data["keep_largest"]),
                             connectivity=int(data["connectivity"]))  # fmt: skip


@dataclass(frozen=True)
class Manifest:
    """The whole of ``model.json``. ``files`` is filled in by :func:`distill.package.write_manifest`."""

    toolkit_version: str
    created_utc: str
    model: ModelSection
    inputs: tuple[InputChannel, ...]
    output: OutputSection
    labels: LabelsSection
    preprocessing: PreprocessingSection
    inference: InferenceSettings
    postprocessing: PostprocessConfig
    source: SourceSection
    parity: dict[str, Any]
    engines: tuple[EngineEntry, ...] = ()
    files: dict[str, FileEntry] = field(default_factory=dict)
    format: str = PACKAGE_FORMAT
    format_version: int = FORMAT_VERSION
    #: the distilled-uncertainty output; ``None`` (and no ``uncertainty`` key) for packages without one
    uncertainty: UncertaintySection | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "format_version": self.format_version, "toolkit_version": self.toolkit_version,
            "created_utc": self.created_utc, "model": self.model.to_dict(),
            "inputs": [c.to_dict() for c in self.inputs], "output": self.output.to_dict(),
            **({"uncertainty": self.uncertainty.to_dict()} if self.uncertainty is not None else {}),
            "labels": self.labels.to_dict(), "preprocessing": self.preprocessing.to_dict(),
            "inference": self.inference.to_dict(), "postprocessing": postprocess_to_dict(self.postprocessing),
            "source": self.source.to_dict(), "parity": dict(self.parity),
            "engines": [e.to_dict() for e in self.engines], "files": {k: v.to_dict() for k, v in self.files.items()},
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model.json") -> Manifest:
        """Parse and check a manifest whose format and version were already accepted.

        Raises:
            PackageError: a missing or malformed section or field, or a value that would make
                the package run wrongly (see the module docstring), named by its path.
        """
        check = _Checker(source)
        get = check.section
        manifest = cls(
            toolkit_version=str(data.get("toolkit_version", "unknown")),
            created_utc=str(data.get("created_utc", "")),
            model=check.parse("model", lambda: ModelSection.from_dict(get(data, "model"))),
            inputs=check.parse("inputs", lambda: tuple(
                InputChannel(int(c["index"]), str(c["modality"]), tuple(c["aliases"])) for c in get(data, "inputs"))),
            output=check.parse("output", lambda: OutputSection.from_dict(get(data, "output"))),
            labels=check.parse("labels", lambda: LabelsSection(**get(data, "labels"))),
            preprocessing=check.parse("preprocessing",
                                      lambda: PreprocessingSection.from_dict(get(data, "preprocessing"))),
            inference=check.parse("inference", lambda: InferenceSettings.from_dict(get(data, "inference"))),
            postprocessing=check.parse("postprocessing", lambda: postprocess_from_dict(get(data, "postprocessing"))),
            source=check.parse("source", lambda: SourceSection(**get(data, "source"))),
            parity=dict(data.get("parity", {})),
            engines=check.parse("engines", lambda: tuple(EngineEntry(**e) for e in data.get("engines", []))),
            files=check.parse("files", lambda: {str(k): FileEntry(str(v["sha256"]), int(v["bytes"]))
                                                for k, v in get(data, "files").items()}),
            format=str(data.get("format")), format_version=int(data.get("format_version", 0)),
            uncertainty=check.parse("uncertainty", lambda: None if data.get("uncertainty") is None
                                    else UncertaintySection.from_dict(data["uncertainty"])),
        )  # fmt: skip
        manifest.check_values(check)
        return manifest

    def check_values(self, check: _Checker) -> None:
        """Refuse values that parse but would make the package segment wrongly or not at all."""
        output = self.output
        if output.kind not in OUTPUT_KINDS:
            raise check.fail("output.kind", f"{output.kind!r} is not one of {OUTPUT_KINDS}")
        if output.kind == "sigmoid" and output.regions != REGIONS:
            raise check.fail("output.regions", f"{list(output.regions)} are not the BraTS regions {list(REGIONS)}")
        for region in output.regions:
            value = output.thresholds.get(region)
            if value is None or not 0.0 < value < 1.0:
                raise check.fail(f"output.thresholds.{region}",
                                 f"{value!r} is not a probability strictly between 0 and 1")
        if self.uncertainty is not None:
            _check_uncertainty(check, self.uncertainty, output.regions)
        _check_indices(check, [c.index for c in self.inputs])
        try:
            get_convention(self.labels.convention)
        except Exception as exc:
            raise check.fail("labels.convention", str(exc)) from exc
        pre = self.preprocessing
        if pre.divisor < 1:
            raise check.fail("preprocessing.divisor", f"{pre.divisor} is not a positive integer")
        if pre.target_spacing is not None and (len(pre.target_spacing) != 3 or min(pre.target_spacing) <= 0):
            raise check.fail("preprocessing.target_spacing",
                             f"{list(pre.target_spacing)} is not three positive spacings")
        if any(edge % pre.divisor or edge <= 0 for edge in self.inference.tile):
            raise check.fail("inference.tile",
                             f"{list(self.inference.tile)} is not a multiple of the divisor {pre.divisor}")
        if not 0.0 <= self.inference.overlap < 1.0:
            raise check.fail("inference.overlap", f"{self.inference.overlap} is not in [0, 1)")
        for name, entry in self.files.items():
            if not _SHA256.match(entry.sha256):
                raise check.fail(f"files.{name}.sha256", f"{entry.sha256[:20]!r} is not a sha256")


def _check_uncertainty(check: _Checker, section: UncertaintySection, regions: Sequence[str]) -> None:
    """The uncertainty output must be the graph's ``uncertainty`` tensor, over the output's regions, in [0, 0.5]."""
    if section.output.name != "uncertainty" or section.output.layout != "B,K,X,Y,Z":
        raise check.fail("uncertainty.output", f"{section.output.to_dict()} is not the 'uncertainty' output B,K,X,Y,Z")
    if tuple(section.regions) != tuple(regions):
        raise check.fail("uncertainty.regions", f"{list(section.regions)} are not the output's {list(regions)}")
    if tuple(section.range) != UNCERTAINTY_RANGE:
        raise check.fail("uncertainty.range", f"{list(section.range)} is not {list(UNCERTAINTY_RANGE)}")


def _check_indices(check: _Checker, indices: Sequence[int]) -> None:
    if list(indices) != list(range(len(indices))) or not indices:
        raise check.fail("inputs", f"channel indices {list(indices)} are not 0..{len(indices) - 1} in order")
