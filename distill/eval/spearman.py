"""Spearman rank correlation of two maps over the voxels of a mask.

Definition (Spearman, "The proof and measurement of association between two things", Am. J.
Psychol. 1904; the tie handling of Kendall, *Rank Correlation Methods*, 1948, ch. 3): replace
each map's values inside the mask by their ranks, tied values sharing the mean of the ranks
they span ("average ranks"), and take Pearson's correlation of the two rank vectors::

    rho = sum_i (r_i - mean r)(s_i - mean s) / sqrt(sum_i (r_i - mean r)^2 * sum_i (s_i - mean s)^2)

With average ranks this is what ``scipy.stats.spearmanr`` returns; the shortcut
``1 - 6 sum d_i^2 / (n (n^2 - 1))`` holds only without ties, and uncertainty maps are full of
them (every voxel where the teacher's passes agree exactly has spread 0).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from distill.eval.masks import check_finite, masked_voxels


def spearman(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Spearman's rho between ``x`` and ``y`` over the voxels of ``mask``.

    Args:
        x, y: maps of one shape ``S`` (e.g. ``(X, Y, Z)``: one region's uncertainty), finite.
        mask: boolean ``S``, the voxels to correlate over (default: all); non-zero is inside.

    Returns:
        A float in [-1, 1]; NaN when either map is constant over the mask (no ranking, so no
        correlation is defined; scipy returns NaN there too).

    Raises:
        ValueError: shapes differ, the mask holds fewer than 2 voxels, or a value is not finite.
    """
    x, y = masked_voxels((x, y), mask, ("x", "y"))
    if x.size < 2:
        raise ValueError(f"Spearman's rho needs at least 2 voxels, the mask holds {x.size}")
    rx = rankdata(check_finite(x, "x"), method="average")
    ry = rankdata(check_finite(y, "y"), method="average")
    rx -= rx.mean()
    ry -= ry.mean()
    denominator = np.sqrt(np.dot(rx, rx) * np.dot(ry, ry))
    if denominator == 0:
        return float("nan")
    return float(np.clip(np.dot(rx, ry) / denominator, -1.0, 1.0))
