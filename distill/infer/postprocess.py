"""Optional clean-up of predicted tumour regions.

Two independent steps, each off unless asked for:

* Connected-component filtering per region: drop components smaller than a minimum size
  (in voxels or ml), or keep only the largest component. Small isolated blobs are the
  typical false positives of small networks, and BraTS ET scoring punishes them hard (an
  ET predicted where the ground truth has none scores Dice 0).
* Hierarchy enforcement ET ⊂ TC ⊂ WT: a child voxel outside its parent is dropped
  (TC &= WT, then ET &= TC), the nesting the BraTS regions have by definition.

:func:`postprocess_regions` filters first and enforces the hierarchy last, so its output
always nests even where filtering removed a parent component around a child.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from distill.data.conventions import REGIONS

# Neighbourhood size -> scipy's structuring-element rank in 3D (faces, +edges, +corners).
_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}
SIZE_UNITS = ("voxels", "ml")


def enforce_hierarchy(regions: np.ndarray) -> np.ndarray:
    """Clip each region to its parent.

    Args:
        regions: boolean ``(3, *S)`` in ``REGIONS`` order (WT, TC, ET).

    Returns:
        A new boolean ``(3, *S)`` array with ``TC ⊆ WT`` and ``ET ⊆ TC``; WT is unchanged.
    """
    regions = np.asarray(regions)
    if regions.ndim < 2 or regions.shape[0] != len(REGIONS):
        raise ValueError(f"expected regions of shape (3, ...) in {REGIONS} order, got {regions.shape}")
    out = regions.astype(bool, copy=True)
    out[1] &= out[0]
    # ET is clipped to the already clipped TC, so ET ⊆ TC ⊆ WT holds transitively.
    out[2] &= out[1]
    return out


def _label_components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Component labels of a 3D mask and the voxel count of each label (index 0 = background)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"connected components need a 3D mask, got shape {mask.shape}")
    if connectivity not in _CONNECTIVITY_RANK:
        raise ValueError(f"connectivity must be one of {sorted(_CONNECTIVITY_RANK)}, got {connectivity}")
    structure = ndimage.generate_binary_structure(3, _CONNECTIVITY_RANK[connectivity])
    labels, _ = ndimage.label(mask, structure=structure)
    return labels, np.bincount(labels.ravel())


def remove_small_components(mask: np.ndarray, min_voxels: int, connectivity: int = 26) -> np.ndarray:
    """Drop the connected components of ``mask`` with fewer than ``min_voxels`` voxels.

    Args:
        mask: 3D mask ``S``; non-zero is foreground.
        min_voxels: components of at least this many voxels stay; 0 or 1 keeps everything.
        connectivity: 6, 18 or 26 (voxels sharing a face; or also an edge; or also a corner).

    Returns:
        A new boolean array of shape ``S``.
    """
    if min_voxels < 0:
        raise ValueError(f"min_voxels must be >= 0, got {min_voxels}")
    labels, sizes = _label_components(mask, connectivity)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def keep_largest_component(mask: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """Only the largest connected component of ``mask`` (a 3D mask ``S``); empty stays empty.

    Components of equal size are told apart by label order (scan order of their first
    voxel), so the one reached first in C order wins; the result is deterministic.
    """
    labels, sizes = _label_components(mask, connectivity)
    if sizes.size <= 1:
        return np.zeros(labels.shape, dtype=bool)
    # argmax returns the first maximum, i.e. the lowest label among equals.
    largest = 1 + int(np.argmax(sizes[1:]))
    return labels == largest


@dataclass(frozen=True)
class PostprocessConfig:
    """Which clean-up steps to run.

    Attributes:
        enforce_hierarchy: clip TC to WT and ET to TC (after component filtering).
        min_size: region name -> minimum component size; regions not named are not filtered.
        min_size_unit: ``"voxels"`` or ``"ml"`` (needs the voxel spacing).
        keep_largest: regions reduced to their largest component.
        connectivity: 6, 18 or 26, for every component operation.

    A region may be both size-filtered and reduced to its largest component; the size
    filter then also drops the largest component when it is under the minimum.
    """

    enforce_hierarchy: bool = False
    min_size: Mapping[str, float] = field(default_factory=dict)
    min_size_unit: str = "voxels"
    keep_largest: tuple[str, ...] = ()
    connectivity: int = 26

    def __post_init__(self) -> None:
        # Accept any iterable of region names; store a tuple so the frozen config stays immutable there.
        object.__setattr__(self, "keep_largest", tuple(self.keep_largest))
        unknown = sorted({*self.min_size, *self.keep_largest} - set(REGIONS))
        if unknown:
            raise ValueError(f"unknown region(s) {unknown}; expected names from {REGIONS}")
        if self.min_size_unit not in SIZE_UNITS:
            raise ValueError(f"min_size_unit must be one of {SIZE_UNITS}, got {self.min_size_unit!r}")
        negative = {r: v for r, v in self.min_size.items() if not v >= 0}
        if negative:
            raise ValueError(f"minimum component sizes must be >= 0, got {negative}")
        if self.connectivity not in _CONNECTIVITY_RANK:
            raise ValueError(f"connectivity must be one of {sorted(_CONNECTIVITY_RANK)}, got {self.connectivity}")

    @property
    def is_noop(self) -> bool:
        return not (self.enforce_hierarchy or self.min_size or self.keep_largest)


def min_size_in_voxels(min_size: float, unit: str, spacing: Sequence[float] | None) -> int:
    """A minimum component size as a voxel count (a component of ``n`` voxels stays iff ``n >= result``).

    For ml, ``ceil(min_ml / voxel_ml)``; the small tolerance keeps sizes that are an exact
    multiple of the voxel volume (0.006 ml with 0.002 ml voxels -> 3) from rounding up
    because of binary floating point.
    """
    if unit == "voxels":
        return int(math.ceil(min_size))
    if spacing is None:
        raise ValueError("a minimum component size in ml needs the voxel spacing")
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    if not voxel_ml > 0:
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    return int(math.ceil(min_size / voxel_ml - 1e-9))


def postprocess_regions(
    regions: np.ndarray, config: PostprocessConfig, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Apply ``config`` to predicted regions.

    Args:
        regions: boolean ``(3, X, Y, Z)`` in ``REGIONS`` order (WT, TC, ET).
        config: the steps to run.
        spacing: voxel edge lengths in mm; needed only for ``min_size_unit="ml"``.

    Returns:
        A new boolean ``(3, X, Y, Z)`` array; the input is not modified.
    """
    regions = np.asarray(regions)
    if regions.ndim != 4 or regions.shape[0] != len(REGIONS):
        raise ValueError(f"expected regions of shape (3, X, Y, Z) in {REGIONS} order, got {regions.shape}")
    out = regions.astype(bool, copy=True)
    for index, name in enumerate(REGIONS):
        if name in config.min_size:
            threshold = min_size_in_voxels(config.min_size[name], config.min_size_unit, spacing)
            out[index] = remove_small_components(out[index], threshold, config.connectivity)
        if name in config.keep_largest:
            out[index] = keep_largest_component(out[index], config.connectivity)
    if config.enforce_hierarchy:
        out = enforce_hierarchy(out)
    return out
