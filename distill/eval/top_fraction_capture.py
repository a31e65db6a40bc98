"""How many of the positive voxels a score's top fraction catches ("top-q capture").

For an uncertainty map and the target "the segmentation is wrong here": flag the ``q`` most
uncertain voxels of the mask (``q`` = 5 % in Distill's uncertainty benchmark, issue 15) for
review; the capture is the fraction of all erroneous voxels that fall among the flagged ones:
the recall of the errors at a fixed review budget. Related measures threshold the uncertainty
by value rather than by rank: the uncertainty-error overlap (Jungo & Reyes, "Assessing
reliability and challenges of uncertainty estimations for medical image segmentation", MICCAI
2019) and the filtered-voxel ratios of the BraTS uncertainty challenge (Mehta et al.,
"QU-BraTS", MELBA 2022). A budget in voxels makes maps on different scales (a standard
deviation, an entropy in bits) comparable without choosing a threshold for each.

Definition, over the ``N`` voxels of the mask, ``P`` of them positive:

* budget ``k = ceil(q N)`` voxels (``q N`` is first rounded to 9 decimals, so ``0.07 x 100``
  is a budget of 7, not 8 through floating-point error); ``0 < q <= 1``.
* cutoff ``t`` = the ``k``-th largest score. Voxels above ``t`` (``a`` of them, ``a_pos``
  positive) are flagged. The ``m`` voxels tied at ``t`` (``m_pos`` positive) share the
  ``k - a`` remaining slots: each counts ``(k - a) / m`` of a voxel. This is the expected
  capture under a uniformly random order of the tied voxels, so the result depends neither on
  the voxels' order in memory nor on a sort's tie-breaking::

      capture = ( a_pos + m_pos (k - a) / m ) / P

A constant score therefore captures exactly ``k / N`` (about ``q``), the chance level; a
perfect score captures ``min(1, k / P)``.
"""

from __future__ import annotations

import math

import numpy as np

from distill.eval.masks import check_finite, masked_voxels


def top_fraction_capture(score: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
                         fraction: float = 0.05) -> float:  # fmt: skip
    """Fraction of ``target``'s positive voxels among the ``fraction`` highest-``score`` voxels of ``mask``.

    Args:
        score: finite map of shape ``S``; higher is flagged first (e.g. an uncertainty map).
        target: boolean (or 0/1) map of shape ``S``; non-zero is positive (e.g. the
            segmentation's errors).
        mask: boolean ``S``, the voxels the budget is a fraction of (default: all).
        fraction: ``q`` in (0, 1], the share of the mask's voxels flagged.

    Returns:
        A float in [0, 1]; NaN when the mask holds no positive voxel (nothing to catch). Ties
        at the cutoff are shared as the module docstring defines.

    Raises:
        ValueError: shapes differ, the mask is empty, ``fraction`` is outside (0, 1], or a score
            is not finite.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    score, target = masked_voxels((score, target), mask, ("score", "target"))
    score = check_finite(score, "score")
    positive = target.astype(bool, copy=False)
    n_pos = int(np.count_nonzero(positive))
    if n_pos == 0:
        return float("nan")
    n = score.size
    k = min(n, math.ceil(round(fraction * n, 9)))
    cutoff = np.partition(score, n - k)[n - k]  # the k-th largest score
    above = score > cutoff
    tied = score == cutoff
    n_above = int(np.count_nonzero(above))
    n_tied = int(np.count_nonzero(tied))
    caught = np.count_nonzero(positive & above) + np.count_nonzero(positive & tied) * (k - n_above) / n_tied
    return float(min(1.0, caught / n_pos))
