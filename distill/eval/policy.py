"""The one empty-mask policy every Distill metric follows.

A metric compares a predicted mask with a ground-truth mask. When one or both are empty,
the usual formulas divide by zero (Dice, sensitivity) or have no surface to measure
(HD95). Each such case is one *cell* of the table below, and each cell holds either a
fixed value or ``COMPUTED`` (the ordinary formula is well defined there and is used).

===============  ============  ====================  ====================  ============
metric           both empty    GT empty, pred not    pred empty, GT not    neither
===============  ============  ====================  ====================  ============
dice             1.0           0.0                   0.0                   computed
hd95 (mm)        0.0           373.13                373.13                computed
sensitivity      1.0           1.0                   0.0                   computed
specificity      1.0           computed              1.0                   computed
===============  ============  ====================  ====================  ============

Why these values:

* Dice and HD95 follow the BraTS challenge convention (Menze et al., IEEE TMI 2015;
  Bakas et al., arXiv:1811.02629): an empty region predicted empty is a perfect answer
  (Dice 1, HD95 0); a region on one side only is a total miss (Dice 0) with the largest
  distance possible, the diagonal of the 240 x 240 x 155 mm BraTS image,
  sqrt(240² + 240² + 155²) = 373.1287 mm, written 373.13 as the BraTS tools round it.
* Sensitivity TP / (TP + FN) only counts misses. With no tumour in the ground truth there is
  nothing to miss, so it is 1.0 whatever the prediction; false positives are charged to
  Dice, HD95 and specificity instead, never twice. With tumour present and nothing
  predicted, the formula gives 0.0, which the table states explicitly.
* Specificity TN / (TN + FP) is defined whenever the volume has background, which BraTS
  volumes always have. With an empty prediction there are no false positives, so 1.0. The
  degenerate volume with no background at all is handled by the same reading as
  sensitivity (a rate over an empty set is 1.0) in :mod:`distill.eval.confusion`.

No metric is ever NaN or infinite, so means and medians over cases need no special care.
"""

from __future__ import annotations

import enum

# sqrt(240^2 + 240^2 + 155^2) mm, rounded as BraTS reports it.
BRATS_MAX_HD95_MM = 373.13


class EmptyCell(enum.Enum):
    """Which of the two masks is empty."""

    BOTH_EMPTY = "both empty"
    GT_EMPTY = "gt empty, pred not"
    PRED_EMPTY = "pred empty, gt not"
    NEITHER = "neither empty"


class _Computed:
    """Marker for a cell where the ordinary formula applies."""

    def __repr__(self) -> str:
        return "COMPUTED"


COMPUTED = _Computed()

EMPTY_MASK_POLICY: dict[str, dict[EmptyCell, float | _Computed]] = {
    "dice": {
        EmptyCell.BOTH_EMPTY: 1.0,
        EmptyCell.GT_EMPTY: 0.0,
        EmptyCell.PRED_EMPTY: 0.0,
        EmptyCell.NEITHER: COMPUTED,
    },
    "hd95": {
        EmptyCell.BOTH_EMPTY: 0.0,
        EmptyCell.GT_EMPTY: BRATS_MAX_HD95_MM,
        EmptyCell.PRED_EMPTY: BRATS_MAX_HD95_MM,
        EmptyCell.NEITHER: COMPUTED,
    },
    "sensitivity": {
        EmptyCell.BOTH_EMPTY: 1.0,
        EmptyCell.GT_EMPTY: 1.0,
        EmptyCell.PRED_EMPTY: 0.0,
        EmptyCell.NEITHER: COMPUTED,
    },
    "specificity": {
        EmptyCell.BOTH_EMPTY: 1.0,
        EmptyCell.GT_EMPTY: COMPUTED,
        EmptyCell.PRED_EMPTY: 1.0,
        EmptyCell.NEITHER: COMPUTED,
    },
}


def empty_cell(gt_empty: bool, pred_empty: bool) -> EmptyCell:
    """The table row for a (ground truth empty?, prediction empty?) pair."""
    if gt_empty and pred_empty:
        return EmptyCell.BOTH_EMPTY
    if gt_empty:
        return EmptyCell.GT_EMPTY
    if pred_empty:
        return EmptyCell.PRED_EMPTY
    return EmptyCell.NEITHER


def policy_value(metric: str, gt_empty: bool, pred_empty: bool) -> float | None:
    """The fixed value of ``metric`` for this cell, or ``None`` where the formula applies.

    Raises ``KeyError`` for a metric that has no row in the table, so a new metric cannot
    silently go without a declared policy.
    """
    if metric not in EMPTY_MASK_POLICY:
        raise KeyError(f"no empty-mask policy declared for metric {metric!r}; known: {sorted(EMPTY_MASK_POLICY)}")
    value = EMPTY_MASK_POLICY[metric][empty_cell(gt_empty, pred_empty)]
    return value if isinstance(value, float) else None
