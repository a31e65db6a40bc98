"""Dice similarity coefficient of two binary masks.

Definition (Dice 1945; the BraTS overlap score of Menze et al., IEEE TMI 2015, eq. 1, and
Bakas et al., arXiv:1811.02629)::

    Dice(P, G) = 2 |P ∩ G| / (|P| + |G|)

Empty masks follow :mod:`distill.eval.policy` (both empty -> 1, one empty -> 0).
"""

from __future__ import annotations

import numpy as np

from distill.eval.masks import as_mask_pair
from distill.eval.policy import policy_value


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of one prediction/ground-truth pair.

    Args:
        pred: predicted mask, any shape ``S``; non-zero is foreground.
        gt: ground-truth mask of the same shape ``S``.

    Returns:
        A float in [0, 1], reduced over all voxels of the pair (one case, one region).
    """
    pred, gt = as_mask_pair(pred, gt)
    n_pred = int(np.count_nonzero(pred))
    n_gt = int(np.count_nonzero(gt))
    fixed = policy_value("dice", gt_empty=n_gt == 0, pred_empty=n_pred == 0)
    if fixed is not None:
        return fixed
    overlap = int(np.count_nonzero(pred & gt))
    # Integer counts until the single division keeps the value exact to float64 rounding.
    return 2.0 * overlap / (n_pred + n_gt)
