"""One predictor for the CLI, the benchmarks and the service: a package in, label maps out.

    predictor = Predictor.from_package("pkg/", backend="onnxruntime", threads=2)
    result = predictor.segment(images, affine)                  # images (4, X, Y, Z), any grid
    result.labels                                                # (X, Y, Z) uint8, input grid, package convention

Like nnU-Net's in-memory predictor, it holds the network once and reads everything else from
the self-describing folder: channel order, preprocessing and its inverse, thresholds,
post-processing and label mapping. Per case:

1. check channels (count, and names when given, aliases accepted) and reorder to the package's;
2. preprocess (crop to the brain, z-score, resample, pad to the divisor) as the manifest says;
3. run the backend over the whole volume when it is small enough and the backend takes its
   shape, else in overlapping tiles (:func:`distill.infer.sliding_window.predict_logits`); with
   ``tta="mirror8"``, once per mirroring of the three axes (8 passes, logits averaged, as
   nnU-Net's default test-time augmentation does; ``"none"``, one pass, is the default);
4. sigmoid, back to the input grid (resampled inside the brain's box, then placed), threshold per region,
   post-process, write labels in the requested convention; optional probabilities and a
   per-region uncertainty (binary entropy in bits, 0 = certain, 1 = p of 0.5).

A package whose student has the distilled-uncertainty head also gives, on request
(``return_distilled_uncertainty``), the head's map: the predicted per-region standard
deviation of the teacher ensemble's passes, in [0, 0.5], resampled back to the input grid like
the probabilities (0 outside the brain's bounding box). It is the teacher's disagreement, not a
calibrated probability of error. The labels do not depend on whether it was asked for.

Stage times (preprocess, model, postprocess) come with every result; the model stage runs
until the backend's device work is finished.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.data.case import check_not_constant
from distill.data.conventions import LabelConvention, get_convention
from distill.data.nifti import voxel_spacing
from distill.data.preprocess import (
    PreprocessedCase,
    place,
    preprocess,
    restore_probabilities_in_crop,
    restore_thresholded,
    uncrop,
)
from distill.errors import DataError, DistillError
from distill.infer.backends import Backend, BackendSpec, create_backend
from distill.infer.postprocess import PostprocessConfig, postprocess_regions
from distill.infer.sliding_window import check_tta, mirrored_logits
from distill.package import ModelPackage
from distill.students.unet import MAX_UNCERTAINTY


class InputMismatchError(DataError):
    """Images whose channels do not match what the package expects."""


class NoUncertaintyOutput(DistillError):
    """The distilled uncertainty was asked of a package (or backend) that does not have it."""


@dataclass
class Segmentation:
    """One case's result, on the input grid.

    Attributes:
        labels: uint8 ``(X, Y, Z)`` in :attr:`convention`.
        convention: label convention name.
        probabilities: float32 ``(3, X, Y, Z)`` (WT, TC, ET) or ``None``.
        uncertainty: float32 ``(3, X, Y, Z)`` binary entropy in bits, or ``None``.
        distilled_uncertainty: float32 ``(3, X, Y, Z)`` the uncertainty head's predicted teacher
            spread (standard deviation of the teacher's per-pass probabilities, [0, 0.5]), or ``None``.
        tiled: whether the model ran in tiles (``False``: one whole-volume pass).
        timings: seconds per stage: ``preprocess``, ``model``, ``postprocess``.
    """

    labels: np.ndarray
    convention: str
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    distilled_uncertainty: np.ndarray | None = None
    tiled: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def binary_entropy(probabilities: np.ndarray) -> np.ndarray:
    """``-(p log2 p + (1-p) log2 (1-p))`` per voxel and region; 0 where p is 0 or 1."""
    p = np.clip(probabilities.astype(np.float64), 1e-12, 1 - 1e-12)
    return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).astype(np.float32)


class Predictor:
    """A loaded package and one backend; see the module docstring."""

    def __init__(self, package: ModelPackage, backend: Backend, postprocess: PostprocessConfig | None = None,
                 tta: str = "none") -> None:
        check_tta(tta)
        self.package = package
        self.backend = backend
        self.postprocess = postprocess or package.postprocess_config
        self.settings = package.inference
        self.tta = tta
        self.ready = False

    @classmethod
    def from_package(cls, path: str | Path, backend: str | BackendSpec = "torch", *, device: str | None = None,
                     precision: str | None = None, threads: int | None = None, verify: bool = True,
                     warm_up: bool = True, postprocess: PostprocessConfig | None = None, tta: str = "none",
                     **options: Any) -> Predictor:
        """Open (and verify) a package and load ``backend`` for it.

        Args:
            backend: a :class:`BackendSpec`, or its text form (``"torch:cuda:fp16"``; see
                :meth:`BackendSpec.parse`); ``device``, ``precision``, ``threads`` and
                ``options`` (``cuda_graphs``, ``compile``, ``engine_cache``) override its
                fields. Nothing is built here: TensorRT engines come from ``distill
                export-engine``.
            warm_up: run once on a small input before returning, so :attr:`ready` means the
                backend has executed here (TensorRT engines only prove they fit this way).
            tta: ``"none"`` (one pass) or ``"mirror8"`` (the 8 mirrorings averaged: 8x the
                network time).

        Raises:
            PackageError, BackendUnavailable, BackendOptionError.
        """
        package = ModelPackage.open(path, verify=verify)
        changes = {
            k: v
            for k, v in {"device": device, "precision": precision, "threads": threads, **options}.items()
            if v is not None
        }
        spec = BackendSpec.parse(backend, **changes) if isinstance(backend, str) else replace(backend, **changes)
        check_tta(tta)  # before the backend is loaded
        predictor = cls(package, create_backend(package, spec), postprocess, tta)
        if warm_up:
            predictor.warm_up()
        return predictor

    # ------------------------------------------------------------------ readiness

    @property
    def warm_up_shape(self) -> tuple[int, ...]:
        """The TensorRT profile's smallest input: every backend accepts it, and it costs little."""
        return tuple(self.settings.profile_min)

    def warm_up(self) -> None:
        """One inference on zeros; :attr:`ready` turns true only if it succeeds."""
        self.backend(torch.zeros(self.warm_up_shape))
        self.backend.synchronize()
        self.ready = True

    # ------------------------------------------------------------------ channels

    def check_channels(self, images: np.ndarray, modalities: Sequence[str] | None = None) -> np.ndarray:
        """``images (C, X, Y, Z)`` in the package's channel order, or :class:`InputMismatchError`.

        With ``modalities`` (one name per channel, aliases accepted, any order), channels are
        reordered to the package's order; without, they must already be in it.
        """
        expected = self.package.modalities
        if images.ndim != 4 or images.shape[0] != len(expected):
            raise InputMismatchError(
                f"the package expects {len(expected)} channels ({', '.join(expected)}, in this order) as an array "
                f"(C, X, Y, Z); got shape {images.shape}"
            )
        if modalities is None:
            return images
        order = [self.resolve_modality(name) for name in modalities]
        if sorted(order) != sorted(expected):
            raise InputMismatchError(f"channels named {list(modalities)} do not cover {', '.join(expected)} once each")
        if order == list(expected):
            return images  # already in order: no copy of ~140 MB at 1 mm
        return images[[order.index(m) for m in expected]]

    def resolve_modality(self, name: str) -> str:
        """The package's modality for ``name`` (case-insensitive; canonical names and aliases)."""
        key = name.strip().lower()
        for modality, aliases in self.package.aliases.items():
            if key == modality or key in aliases:
                return modality
        accepted = "; ".join(f"{m}: {', '.join(a)}" for m, a in self.package.aliases.items())
        raise InputMismatchError(f"unknown modality {name!r}; this package accepts {accepted}")

    def stack_modalities(self, named: Mapping[str, np.ndarray]) -> np.ndarray:
        """``{modality or alias: (X, Y, Z)}`` -> ``(C, X, Y, Z)`` in the package's order."""
        names = list(named)
        images = np.stack([np.asarray(named[n], dtype=np.float32) for n in names]) if names else np.zeros((0, 1, 1, 1))
        return self.check_channels(images, names)

    # ------------------------------------------------------------------ the stages

    def prepare(
        self, images: np.ndarray, affine: np.ndarray, modalities: Sequence[str] | None = None
    ) -> PreprocessedCase:
        """Channel check and preprocessing: ``(C, X, Y, Z)`` raw -> the package's grid."""
        images = self.check_channels(np.asarray(images), modalities)
        for name, channel in zip(self.package.modalities, images):
            check_not_constant(channel, f"{name} image")
        return preprocess(images.astype(np.float32, copy=False), np.asarray(affine, dtype=np.float64),
                          config=self.package.preprocess_config)  # fmt: skip

    def tile_for(self, shape: Sequence[int]) -> tuple[int, int, int] | None:
        """``None`` (one whole-volume pass) when the volume is small enough and the backend takes it, else the tile."""
        whole = (1, len(self.package.modalities), *shape)
        if int(np.prod(shape)) <= self.settings.whole_volume_max_voxels and self.backend.fits(whole):
            return None
        return self.settings.tile

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, bool]:
        """Region probabilities ``(3, *S)`` float32 for preprocessed ``images (C, *S)``, and whether it tiled."""
        tile = self.tile_for(images.shape[1:])
        batch = torch.from_numpy(np.ascontiguousarray(images[None], dtype=np.float32)).to(self.backend.device)
        logits = mirrored_logits(self.backend, batch, tile, self.settings.overlap, self.tta)
        probabilities = torch.sigmoid(logits[0].float()).cpu().numpy()
        return probabilities, tile is not None

    @property
    def has_distilled_uncertainty(self) -> bool:
        """Whether the package has the distilled-uncertainty output."""
        return self.package.has_uncertainty

    def check_distilled_uncertainty(self) -> None:
        """:class:`NoUncertaintyOutput` unless this package and backend can give the distilled uncertainty."""
        if not self.package.has_uncertainty:
            raise NoUncertaintyOutput(
                f"{self.package.root}: this package has no distilled uncertainty output (its student was trained "
                "without --set uncertainty_head=true); train and export one with it, or use the binary entropy "
                "of --save-probabilities"
            )
        if not hasattr(self.backend, "with_uncertainty"):
            raise NoUncertaintyOutput(f"{self.package.root}: backend {self.backend.spec.label} does not return the "
                                      "distilled uncertainty output; use the torch or onnxruntime backend")  # fmt: skip

    def infer_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Probabilities and the distilled uncertainty, both ``(3, *S)`` float32, for preprocessed ``images (C, *S)``.

        Tiles blend both outputs with the same window (a weighted mean of spreads stays in [0, 0.5]).
        """
        self.check_distilled_uncertainty()
        tile = self.tile_for(images.shape[1:])
        batch = torch.from_numpy(np.ascontiguousarray(images[None], dtype=np.float32)).to(self.backend.device)
        both = mirrored_logits(self.backend.with_uncertainty, batch, tile, self.settings.overlap, self.tta)[0]
        k = len(self.package.regions)
        probabilities = torch.sigmoid(both[:k]).cpu().numpy()
        uncertainty = both[k:].clamp(0.0, MAX_UNCERTAINTY).cpu().numpy()
        return probabilities, uncertainty, tile is not None

    def finish(self, prepared: PreprocessedCase, probabilities: np.ndarray, affine: np.ndarray,
               convention: LabelConvention, return_probabilities: bool, return_uncertainty: bool,
               distilled_uncertainty: np.ndarray | None = None) -> Segmentation:
        """Back to the input grid, thresholds, post-processing, labels in ``convention``; a given
        ``distilled_uncertainty`` (on the preprocessed grid) is resampled back like the probabilities."""
        result = self._finish_labels(prepared, probabilities, affine, convention, return_probabilities,
                                     return_uncertainty)  # fmt: skip
        if distilled_uncertainty is not None:
            restored = restore_probabilities_in_crop(distilled_uncertainty, prepared.record)
            result.distilled_uncertainty = uncrop(restored, prepared.record)
        return result

    def _finish_labels(self, prepared: PreprocessedCase, probabilities: np.ndarray, affine: np.ndarray,
                       convention: LabelConvention, return_probabilities: bool,
                       return_uncertainty: bool) -> Segmentation:  # fmt: skip
        record = prepared.record
        thresholds = np.asarray(self.package.thresholds, dtype=np.float32)
        spacing = voxel_spacing(affine)
        if not (return_probabilities or return_uncertainty):
            # Labels alone: only the box where a resampled map can cross its threshold is
            # resampled (the tumour's box, a fraction of the brain); components lie inside it, so
            # post-processing there is exact.
            above, box = restore_thresholded(probabilities, record, thresholds)
            regions = postprocess_regions(above, self.postprocess, spacing=spacing) if above.size else above
            return Segmentation(
                labels=place(convention.from_regions(regions), box, record.original_shape), convention=convention.name
            )
        # Thresholds, post-processing and labels work inside the brain's bounding box: outside it
        # every region is empty, and the full 1 mm grid is ~3x more voxels to touch.
        restored = restore_probabilities_in_crop(probabilities, record)
        regions = postprocess_regions(restored > thresholds.reshape(-1, 1, 1, 1), self.postprocess, spacing=spacing)
        return Segmentation(
            labels=uncrop(convention.from_regions(regions), record),
            convention=convention.name,
            probabilities=uncrop(restored, record) if return_probabilities else None,
            uncertainty=uncrop(binary_entropy(restored), record) if return_uncertainty else None,
        )

    def segment(self, images: np.ndarray, affine: np.ndarray, modalities: Sequence[str] | None = None,
                label_convention: str | None = None, return_probabilities: bool = False,
                return_uncertainty: bool = False, return_distilled_uncertainty: bool = False) -> Segmentation:
        """Labels on the input grid for one case.

        Args:
            images: ``(C, X, Y, Z)`` raw intensities, channels in the package's order unless
                ``modalities`` names them.
            affine: 4x4 voxel-to-world matrix of the input grid.
            modalities: optional name (or alias) of each channel.
            label_convention: output convention (default: the package's).
            return_probabilities, return_uncertainty: also the probabilities and their binary entropy.
            return_distilled_uncertainty: also the uncertainty head's map (packages that have it;
                else :class:`NoUncertaintyOutput`, raised before any work).
        """
        convention = get_convention(label_convention) if label_convention else self.package.convention
        if return_distilled_uncertainty:
            self.check_distilled_uncertainty()
        start = time.perf_counter()
        prepared = self.prepare(images, affine, modalities)
        prepared_at = time.perf_counter()
        distilled = None
        if return_distilled_uncertainty:
            probabilities, distilled, tiled = self.infer_maps(prepared.images)
        else:
            probabilities, tiled = self.infer(prepared.images)
        self.backend.synchronize()
        inferred_at = time.perf_counter()
        result = self.finish(prepared, probabilities, affine, convention, return_probabilities, return_uncertainty,
                             distilled)  # fmt: skip
        result.tiled = tiled
        result.timings = {"preprocess": prepared_at - start, "model": inferred_at - prepared_at,
                          "postprocess": time.perf_counter() - inferred_at}  # fmt: skip
        return result

    def describe(self) -> dict[str, Any]:
        """Backend description plus the package identity, for reports and service health checks."""
        return {**self.backend.describe(), "package": str(self.package.root), "onnx_sha256": self.package.onnx_sha256,
                "tta": self.tta, "ready": self.ready}  # fmt: skip


__all__ = ["InputMismatchError", "NoUncertaintyOutput", "Predictor", "Segmentation", "binary_entropy"]
