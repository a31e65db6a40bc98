"""Physical volume of a binary mask.

``volume = (number of foreground voxels) x (product of voxel edge lengths)``; BraTS error
analyses report it in millilitres (1 ml = 1000 mm³) to relate errors to lesion size
(Bakas et al., arXiv:1811.02629).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distill.eval.masks import as_spacing

MM3_PER_ML = 1000.0


def voxel_volume_ml(spacing: Sequence[float] | np.ndarray) -> float:
    """Volume of one voxel in ml for voxel edge lengths ``spacing`` in mm."""
    values = as_spacing(spacing, len(np.asarray(spacing).reshape(-1)))
    return float(np.prod(values)) / MM3_PER_ML


def volume_ml(mask: np.ndarray, spacing: Sequence[float] | np.ndarray) -> float:
    """Foreground volume of ``mask`` (any shape ``S``, non-zero is foreground) in ml.

    ``spacing`` holds one edge length in mm per axis of ``mask``. Empty masks have volume 0.
    """
    mask = np.asarray(mask)
    values = as_spacing(spacing, mask.ndim)
    return int(np.count_nonzero(mask)) * float(np.prod(values)) / MM3_PER_ML
