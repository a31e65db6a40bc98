"""Input checks shared by the metric functions: two same-shape boolean masks, a spacing."""

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
