"""The work behind ``/segment`` and ``/segment/raw``, run on a worker thread.

``/segment`` calls :meth:`Predictor.segment` exactly as ``distill predict`` does (channels in
the package's order, the first channel's affine, the requested convention), so both give the
same labels voxel for voxel. Every predictor call holds the model lock: one call at a time per
model (the torch backend sets process-wide thread counts; CUDA-graph replay shares buffers).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distill.data.case import AFFINE_ATOL
from distill.data.conventions import ALIASES, CONVENTIONS, get_convention
from distill.data.nifti import voxel_spacing
from distill.errors import DistillError
from distill.infer.postprocess import postprocess_regions
from serve.errors import ServeError
from serve.multipart import Part
from serve.nifti_io import DecodeLimits, channels_last, check_same_grid, decode_nifti, encode_nifti, encode_zip
from serve.npy_io import decode_npy, encode_npy

#: The form field for one 4D NIfTI holding every channel, in the package's order.
IMAGE_FIELD = "image"
REGIONS_OUTPUT = "regions"
LABEL_CHOICES = (*CONVENTIONS, *ALIASES, REGIONS_OUTPUT)
OUTPUT_CHOICES = ("labels", "probabilities", "uncertainty", "entropy")
#: What ``outputs.json`` says of each map.
MAP_DESCRIPTIONS = {
    "probabilities": "the student's region probabilities",
    "entropy": "binary entropy of the student's own probabilities, in bits per region (0 certain, 1 at p = 0.5)",
}


@dataclass(frozen=True)
class Limits:
    max_part_bytes: int
    max_voxels: int


@dataclass
class Encoded:
    """A finished answer: body, media type, download name and stage timings (seconds)."""

    body: bytes
    media_type: str
    filename: str
    timings: dict[str, float] = field(default_factory=dict)


class FieldPlan:
    """Which form fields a request may send, checked part by part as they arrive."""

    def __init__(self, modalities: Sequence[str], aliases: Mapping[str, Sequence[str]]) -> None:
        self.modalities = tuple(modalities)
        self.names = {m.lower(): m for m in self.modalities}
        for modality, names in aliases.items():
            for name in names:
                self.names.setdefault(name.lower(), modality)
        self.seen: dict[str, str] = {}  # modality (or IMAGE_FIELD) -> field name used

    def accepted(self) -> str:
        alias_text = "; ".join(f"{m}: {', '.join(sorted({n for n, t in self.names.items() if t == m}))}"
                               for m in self.modalities)  # fmt: skip
        return f"{', '.join(self.modalities)} (aliases {alias_text}), or one 4D NIfTI as {IMAGE_FIELD!r}"

    def accept(self, name: str) -> None:
        key = name.strip().lower()
        if key == IMAGE_FIELD:
            target = IMAGE_FIELD
        elif key in self.names:
            target = self.names[key]
        else:
            raise ServeError(422, "unknown_field", f"unknown field {name[:40]!r}; this package takes {self.accepted()}")
        if target in self.seen:
            what = "the 4D image" if target == IMAGE_FIELD else target
            raise ServeError(422, "duplicate_modality", f"fields {self.seen[target]!r} and {name!r} both give {what}")
        if (target == IMAGE_FIELD and self.seen) or (target != IMAGE_FIELD and IMAGE_FIELD in self.seen):
            raise ServeError(422, "mixed_inputs", f"send either {IMAGE_FIELD!r} (one 4D NIfTI) or one file per "
                                                  "modality, not both")  # fmt: skip
        self.seen[target] = name

    def check_complete(self) -> None:
        if IMAGE_FIELD in self.seen:
            return
        missing = [m for m in self.modalities if m not in self.seen]
        if missing:
            raise ServeError(422, "missing_modality",
                             f"missing {', '.join(missing)}; this package takes {self.accepted()}")  # fmt: skip

    def modality_of(self, name: str) -> str:
        key = name.strip().lower()
        return IMAGE_FIELD if key == IMAGE_FIELD else self.names[key]


def parse_outputs(text: str) -> frozenset[str]:
    chosen = frozenset(p.strip() for p in text.split(",") if p.strip())
    unknown = sorted(chosen - set(OUTPUT_CHOICES))
    if unknown or not chosen:
        raise ServeError(422, "validation_error", f"outputs: {unknown or text!r} not in {', '.join(OUTPUT_CHOICES)}")
    return chosen


def check_outputs_available(outputs: frozenset[str], package: Any) -> None:
    """``uncertainty`` needs a package with the distilled-uncertainty head: else a 422 saying so (no local path)."""
    if "uncertainty" in outputs and not getattr(package, "has_uncertainty", False):
        raise ServeError(422, "output_unavailable",
                         "outputs=uncertainty: the served package has no distilled uncertainty output (its student "
                         "was trained without uncertainty_head); outputs=entropy gives the binary entropy of the "
                         "student's own probabilities instead")  # fmt: skip


def uncertainty_description(package: Any) -> dict[str, Any]:
    """``outputs.json``'s account of the distilled uncertainty map, from the manifest."""
    section = package.manifest.uncertainty
    return {"quantity": section.quantity, "units": section.units, "range": list(section.range),
            "source": section.source, "passes": section.passes, "meaning": section.meaning}  # fmt: skip


def _check_resampled_size(shape: Sequence[int], affine: np.ndarray, target: Sequence[float] | None,
                          max_voxels: int) -> None:  # fmt: skip
    """The grid the package resamples to must respect the voxel limit too (large spacing x small file)."""
    if not target:
        return
    spacing = voxel_spacing(affine)
    resampled = math.prod(max(1, math.ceil(n * s / t)) for n, s, t in zip(shape, spacing, target))
    if resampled > max_voxels:
        raise ServeError(413, "volume_too_large", f"resampled to the package's {tuple(target)} mm grid the volume has "
                                                  f"{resampled} voxels, more than the limit {max_voxels}")  # fmt: skip


def decode_case(parts: Sequence[Part], plan: FieldPlan, limits: Limits,
                target_spacing: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Multipart parts -> ``(C, X, Y, Z)`` float32 in the package's channel order, and the affine."""
    plan.check_complete()
    channels = len(plan.modalities)
    if plan.modality_of(parts[0].name) == IMAGE_FIELD:
        four_d = DecodeLimits(limits.max_part_bytes, limits.max_voxels, channels)
        volume = decode_nifti(parts[0].data, parts[0].name, four_d)
        if volume.data.ndim != 4:
            raise ServeError(422, "bad_dimensions", f"field {IMAGE_FIELD!r} must be 4D with {channels} volumes in the "
                                                    f"package's order ({', '.join(plan.modalities)})")  # fmt: skip
        images, affine = volume.data, volume.affine
    else:
        decoded = {}
        single = DecodeLimits(limits.max_part_bytes, limits.max_voxels)
        for part in parts:
            decoded[plan.modality_of(part.name)] = (part.name, decode_nifti(part.data, part.name, single))
            part.chunks.clear()  # the compressed bytes are no longer needed
        ordered = [decoded[m] for m in plan.modalities]
        check_same_grid(ordered, AFFINE_ATOL)
        images = np.stack([v.data for _, v in ordered])
        affine = ordered[0][1].affine  # the first channel's, as distill.data.case.load_case takes it
    _check_resampled_size(images.shape[1:], affine, target_spacing, limits.max_voxels)
    return images, affine


def _convention_name(labels: str | None, package: Any) -> str:
    if labels is None or labels == REGIONS_OUTPUT:
        return package.convention.name
    return get_convention(labels).name


def segment_case(predictor: Any, lock: threading.Lock, parts: Sequence[Part], plan: FieldPlan, labels: str | None,
                 outputs: frozenset[str], limits: Limits, received_s: float) -> Encoded:  # fmt: skip
    """Decode, segment (under the lock) and encode one ``/segment`` request."""
    start = time.perf_counter()
    package = predictor.package
    images, affine = decode_case(parts, plan, limits, package.preprocess_config.target_spacing)
    decoded_at = time.perf_counter()
    check_outputs_available(outputs, package)
    want_maps = bool(outputs & {"probabilities", "uncertainty", "entropy"})
    # passed only when asked for, so predictors without the argument serve everything else
    distilled = {"return_distilled_uncertainty": True} if "uncertainty" in outputs else {}
    with lock:
        try:
            result = predictor.segment(images, affine, label_convention=_convention_name(labels, package),
                                       return_probabilities="probabilities" in outputs,
                                       return_uncertainty="entropy" in outputs, **distilled)  # fmt: skip
        except DistillError as exc:
            raise ServeError(422, "invalid_input", f"cannot segment this case: {exc}") from None
    encode_start = time.perf_counter()
    if labels == REGIONS_OUTPUT:
        regions = package.convention.to_regions(result.labels).astype(np.uint8)
        label_name, label_bytes = "regions.nii.gz", encode_nifti(channels_last(regions), affine)
    else:
        label_name, label_bytes = "labels.nii.gz", encode_nifti(result.labels, affine)
    if want_maps:
        files = {label_name: label_bytes}
        if result.probabilities is not None:
            files["probabilities.nii.gz"] = encode_nifti(channels_last(result.probabilities.astype(np.float32)), affine)
        maps = {"entropy": result.uncertainty if "entropy" in outputs else None,
                "uncertainty": getattr(result, "distilled_uncertainty", None) if "uncertainty" in outputs else None}
        for name, values in maps.items():
            if values is not None:
                files[f"{name}.nii.gz"] = encode_nifti(channels_last(values.astype(np.float32)), affine)
        description = {"convention": result.convention if labels != REGIONS_OUTPUT else REGIONS_OUTPUT,
                       "regions": list(package.regions), "files": sorted(files),
                       "maps_layout": "X, Y, Z, region (regions in the order of 'regions')",
                       **{name: MAP_DESCRIPTIONS[name] for name in ("probabilities", "entropy") if name in outputs},
                       **({"uncertainty": uncertainty_description(package)} if "uncertainty" in outputs else {})}
        encoded = Encoded(encode_zip(files, description), "application/zip", "segmentation.zip")
    else:
        encoded = Encoded(label_bytes, "application/gzip", label_name)
    done = time.perf_counter()
    encoded.timings = {"decode": received_s + (decoded_at - start), **result.timings, "encode": done - encode_start}
    return encoded


def segment_raw(predictor: Any, lock: threading.Lock, body: bytes, labels: str | None, limits: Limits,
                received_s: float) -> Encoded:  # fmt: skip
    """``/segment/raw``: a preprocessed ``(C, X, Y, Z)`` .npy in, uint8 labels ``(X, Y, Z)`` .npy out.

    Thresholds and post-processing are the package's; post-processing measures sizes on the
    package's grid (its target spacing, 1 mm when it has none).
    """
    start = time.perf_counter()
    package = predictor.package
    images = decode_npy(body, len(package.modalities), package.preprocess_config.divisor, limits.max_voxels)
    decoded_at = time.perf_counter()
    with lock:
        try:
            probabilities, _tiled = predictor.infer(images)
            predictor.backend.synchronize()
        except DistillError as exc:
            raise ServeError(422, "invalid_input", f"cannot segment this array: {exc}") from None
    inferred_at = time.perf_counter()
    thresholds = np.asarray(package.thresholds, dtype=np.float32).reshape(-1, 1, 1, 1)
    spacing = package.preprocess_config.target_spacing or (1.0, 1.0, 1.0)
    regions = postprocess_regions(probabilities > thresholds, predictor.postprocess, spacing=spacing)
    if labels == REGIONS_OUTPUT:
        out = regions.astype(np.uint8)
    else:
        out = get_convention(_convention_name(labels, package)).from_regions(regions)
    processed_at = time.perf_counter()
    body_out = encode_npy(out)
    done = time.perf_counter()
    timings = {"decode": received_s + (decoded_at - start), "model": inferred_at - decoded_at,
               "postprocess": processed_at - inferred_at, "encode": done - processed_at}  # fmt: skip
    return Encoded(body_out, "application/x-npy", "regions.npy" if labels == REGIONS_OUTPUT else "labels.npy", timings)


__all__ = ["Encoded", "FieldPlan", "IMAGE_FIELD", "LABEL_CHOICES", "Limits", "OUTPUT_CHOICES",
           "check_outputs_available", "decode_case", "parse_outputs", "segment_case", "segment_raw"]  # fmt: skip
