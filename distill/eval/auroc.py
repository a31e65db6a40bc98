"""Area under the ROC curve of a score for a binary target, in its Mann-Whitney form.

Definition (Hanley & McNeil, "The meaning and use of the area under a receiver operating
characteristic (ROC) curve", Radiology 1982; Mann & Whitney, Ann. Math. Stat. 1947): the
probability that a randomly drawn positive voxel scores higher than a randomly drawn negative
one, a tie counting one half::

    AUROC = ( #{(p, n): s_p > s_n} + 0.5 #{(p, n): s_p = s_n} ) / (n_pos n_neg)

computed without forming the pairs from the average ranks ``R`` of all scores (ties share the
mean of their ranks, which is what gives a tied pair its half)::

    AUROC = ( sum_{i positive} R_i - n_pos (n_pos + 1) / 2 ) / (n_pos n_neg)

This equals the trapezoidal area under the empirical ROC curve (``sklearn.metrics.roc_auc_score``).
0.5 is no better than chance (a constant score gives exactly 0.5), 1 puts every positive above
every negative.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from distill.eval.masks import check_finite, masked_voxels


def auroc(score: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """AUROC of ``score`` for ``target`` over the voxels of ``mask`` (ties count half).

    Args:
        score: finite map of shape ``S``; higher means "more likely positive" (e.g. an
            uncertainty map, for the target "the segmentation is wrong here").
        target: boolean (or 0/1) map of shape ``S``; non-zero is positive.
        mask: boolean ``S``, the voxels to score over (default: all).

    Returns:
        A float in [0, 1]; NaN when the mask holds no positive or no negative voxel (the curve
        is not defined: nothing to rank against).

    Raises:
        ValueError: shapes differ, the mask is empty, or a score is not finite.
    """
    score, target = masked_voxels((score, target), mask, ("score", "target"))
    positive = target.astype(bool, copy=False)
    n_pos = int(np.count_nonzero(positive))
    n_neg = positive.size - n_pos
    score = check_finite(score, "score")
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score, method="average")
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2.0
    return float(np.clip(u / (float(n_pos) * float(n_neg)), 0.0, 1.0))
