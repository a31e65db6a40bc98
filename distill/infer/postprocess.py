"""Optional clean-up of predicted tumour regions.

Two independent steps, each off unless asked for:

* Connected-component filtering per region: drop components smaller than a minimum size
  (in voxels or ml), or keep only the largest component. Small isolated blobs are the
  typical false positives of small networks, and BraTS ET scoring punishes them hard (an
  ET predicted where the ground truth has none scores Dice 0).
* Hierarchy enforcement ET ⊂ TC ⊂ WT: a child voxel outside its parent is dropped
  (TC &= WT, then ET &= TC), the nesting the BraTS regions have by definition.

:func:`postprocess_regions` enforces the hierarchy before filtering (a child's components are
counted inside its parent, as on a label map) and again after, so its output always nests even
where filtering removed a parent component around a child.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from distill.data.conventions import REGIONS, get_convention
from distill.package.settings import _CONNECTIVITY_RANK, SIZE_UNITS, PostprocessConfig  # noqa: F401 (re-exported)


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
    if config.enforce_hierarchy:
        # a child's components are counted inside its parent, as on a label map (where nnU-Net
        # post-processes): so cleaning saved label maps gives what the predictor writes
        out = enforce_hierarchy(out)
    for index, name in enumerate(REGIONS):
        if name in config.min_size:
            threshold = min_size_in_voxels(config.min_size[name], config.min_size_unit, spacing)
            out[index] = remove_small_components(out[index], threshold, config.connectivity)
        if name in config.keep_largest:
            out[index] = keep_largest_component(out[index], config.connectivity)
    if config.enforce_hierarchy:
        out = enforce_hierarchy(out)
    return out


def postprocess_labels(
    labels: np.ndarray, convention: str, config: PostprocessConfig, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """:func:`postprocess_regions` on a label map ``(X, Y, Z)`` in ``convention``'s values.

    A predicted label map holds its nested regions exactly (each label value is one region
    combination), so cleaning its regions gives what the predictor would have written with
    ``config``: the way to compare post-processing choices on saved predictions, as nnU-Net
    chooses its own on the cross-validation predictions, without running the network again.
    """
    named = get_convention(convention)
    return named.from_regions(postprocess_regions(named.to_regions(labels), config, spacing=spacing))
