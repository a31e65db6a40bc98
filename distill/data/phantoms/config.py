"""Phantom settings (:class:`PhantomConfig`), the output grid, and the constants every stage shares."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from distill.errors import DistillError

KINDS: tuple[str, ...] = ("glioblastoma", "low-grade", "small-enhancing", "multifocal")
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
BRATS_FOV_MM: tuple[float, float, float] = (240.0, 240.0, 155.0)

# BraTS 2017-2021 label values written into Phantom.labels.
NCR, ED, ET = 1, 2, 4
# Dominant normal tissue written into Phantom.tissue (0 outside the brain).
CSF, GM, WM = 1, 2, 3

DEFAULT_KIND_WEIGHTS: dict[str, float] = {
    "glioblastoma": 0.5,
    "low-grade": 0.2,
    "small-enhancing": 0.15,
    "multifocal": 0.15,
}


@dataclass(frozen=True)
class PhantomConfig:
    """How phantoms look; every field has a sensible default.

    The grid always covers the BraTS field of view of 240x240x155 mm: ``spacing_mm=1``
    gives 240x240x155 voxels, ``2`` gives 120x120x78. ``shape`` overrides that for small
    CI volumes (e.g. ``(64, 64, 64)``); the spacing then becomes FOV / shape per axis
    (anisotropic, e.g. 3.75x3.75x2.42 mm for 64³).

    Attributes:
        spacing_mm: isotropic voxel size in mm (ignored when ``shape`` is set).
        shape: explicit output shape; ``None`` derives it from ``spacing_mm``.
        kind_weights: relative probability of each tumour kind (keys from ``KINDS``).
        rotation_deg: maximum random rotation about each axis.
        scale_jitter: per-axis random scaling of the brain, ±this fraction.
        elastic_mm: standard deviation of the smooth elastic displacement.
        bias_strength: standard deviation of the log bias field (0.2 ≈ ±20 %).
        noise_fraction: Rician noise standard deviation relative to white-matter signal in
            1 mm voxels; coarser grids get less (÷ sqrt of the voxel volume in mm³), as
            averaging 1 mm voxels would give.
    """

    spacing_mm: float = 2.0
    shape: tuple[int, int, int] | None = None
    kind_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    rotation_deg: float = 8.0
    scale_jitter: float = 0.10
    elastic_mm: float = 3.0
    bias_strength: float = 0.20
    noise_fraction: float = 0.03

    def __post_init__(self) -> None:
        if self.shape is None:
            if not (0.5 <= self.spacing_mm <= 8.0):
                raise DistillError(f"phantom spacing must be between 0.5 and 8 mm, got {self.spacing_mm}")
        elif len(self.shape) != 3 or any(int(n) < 24 or int(n) > 512 for n in self.shape):
            raise DistillError(f"phantom shape must be three sizes between 24 and 512, got {self.shape}")
        unknown = sorted(set(self.kind_weights) - set(KINDS))
        if unknown:
            raise DistillError(f"unknown phantom tumour kinds {unknown}; known: {', '.join(KINDS)}")
        weights = list(self.kind_weights.values())
        if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
            raise DistillError(
                f"phantom kind weights must be non-negative with a positive sum, got {dict(self.kind_weights)}"
            )
        for name in ("rotation_deg", "scale_jitter", "elastic_mm", "bias_strength", "noise_fraction"):
            if getattr(self, name) < 0:
                raise DistillError(f"phantom setting {name} must be non-negative, got {getattr(self, name)}")
        if self.scale_jitter >= 0.5:
            raise DistillError(f"phantom scale_jitter must be below 0.5, got {self.scale_jitter}")

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """Output array shape (I, J, K)."""
        if self.shape is not None:
            return (int(self.shape[0]), int(self.shape[1]), int(self.shape[2]))
        return tuple(int(math.ceil(fov / self.spacing_mm - 1e-6)) for fov in BRATS_FOV_MM)  # type: ignore[return-value]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm along (I, J, K)."""
        if self.shape is not None:
            return tuple(fov / n for fov, n in zip(BRATS_FOV_MM, self.grid_shape))  # type: ignore[return-value]
        return (float(self.spacing_mm),) * 3  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-world (RAS+, mm) affine of the output grid."""
        return brats_affine(self.voxel_size)


def brats_affine(voxel_size: tuple[float, float, float]) -> np.ndarray:
    """BraTS-style LPS affine ``diag(-sx, -sy, sz)`` whose field-of-view edges do not move with spacing.

    At 1 mm this is exactly the affine of BraTS files (origin 0, 239, 0); at coarser
    spacings voxel 0 is centred on the block of 1 mm voxels it covers.
    """
    sx, sy, sz = (float(s) for s in voxel_size)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [0.5 - sx / 2, 239.5 - sy / 2, -0.5 + sz / 2]
    return affine
