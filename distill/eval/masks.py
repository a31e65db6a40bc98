"""Input checks shared by the metric functions: two same-shape boolean masks, a spacing, the
voxels of same-shape maps inside a mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_mask_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean arrays; ``ValueError`` if their shapes differ.

    Non-boolean input is read as "non-zero is foreground", the usual reading of a binary
    label map stored as integers.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth masks differ in shape: {pred.shape} vs {gt.shape}")
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def as_spacing(spacing: Sequence[float] | np.ndarray, ndim: int) -> np.ndarray:
    """Voxel edge lengths as a float64 vector of length ``ndim``; ``ValueError`` if not positive."""
    values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if values.size != ndim:
        raise ValueError(f"spacing {tuple(values.tolist())} has {values.size} entries for a {ndim}-D mask")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be finite and positive, got {tuple(values.tolist())}")
    return values


def masked_voxels(arrays: Sequence[np.ndarray], mask: np.ndarray | None, names: Sequence[str]) -> list[np.ndarray]:
    """The voxels of each array inside ``mask``, flattened in the same order.

    Every array and ``mask`` must have one shape ``S`` (``ValueError`` naming the first that
    differs); ``mask`` (non-zero is inside) defaults to every voxel. An empty mask is a
    ``ValueError``: a metric over no voxels has no value to report.
    """
    arrays = [np.asarray(a) for a in arrays]
    shape = arrays[0].shape
    for name, array in zip(names, arrays):
        if array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}, expected {shape} (the shape of {names[0]})")
    if mask is None:
        return [a.reshape(-1) for a in arrays]
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask has shape {mask.shape}, expected {shape} (the shape of {names[0]})")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        raise ValueError("the mask selects no voxel")
    return [a[mask] for a in arrays]


def check_finite(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as float64; ``ValueError`` naming ``name`` if any is NaN or infinite."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return values
