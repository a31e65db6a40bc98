"""Per-region threshold calibration on the validation cases (never on test cases).

A student distilled from soft targets is less confident than one trained on labels alone, so a
fixed 0.5 threshold can erase a region whose largest probability is 0.498 (design notes §7).
After training, :func:`calibrate_thresholds` picks per region the threshold in a grid
(0.05, 0.10, ..., 0.95) that maximises the mean Dice over the validation cases, with the
predictions made as :mod:`distill.train.validate` makes them (sliding-window, sigmoid). A voxel
is in the region where ``p > threshold``, as the packaged predictor thresholds. Ties go to the
threshold nearest 0.5 (then the lower), so a region moves off 0.5 only when that helps on
the validation cases. Empty masks follow :mod:`distill.eval.policy` (both empty: Dice 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distill.data.conventions import REGIONS
from distill.eval.policy import policy_value
from distill.students.card import ThresholdCalibration

#: Thresholds searched: 0.05 to 0.95 in steps of 0.05 (0.5 included).
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))
DEFAULT_THRESHOLD = 0.5


def dice_at_thresholds(probabilities: np.ndarray, truth: np.ndarray, grid: Sequence[float]) -> np.ndarray:
    """Dice of ``probabilities > t`` against the mask ``truth`` for every ``t`` in ``grid``.

    Args:
        probabilities: one region's probabilities, any shape ``S``.
        truth: that region's ground truth, shape ``S`` (non-zero is in the region).
        grid: thresholds.

    Returns:
        ``(len(grid),)`` float64 Dice values, counted exactly from sorted probabilities.
    """
    # float32 on both sides, as the packaged predictor compares them
    p = np.asarray(probabilities, dtype=np.float32).ravel()
    g = np.asarray(truth).ravel() != 0
    if p.shape != g.shape:
        raise ValueError(f"probabilities {np.shape(probabilities)} and truth {np.shape(truth)} differ in shape")
    all_sorted, in_sorted = np.sort(p), np.sort(p[g])
    thresholds = np.asarray(grid, dtype=np.float32)
    n_pred = p.size - np.searchsorted(all_sorted, thresholds, side="right")  # count of p > t
    overlap = in_sorted.size - np.searchsorted(in_sorted, thresholds, side="right")
    n_gt = int(g.sum())
    values = []
    for pred, both in zip(n_pred.tolist(), overlap.tolist()):
        fixed = policy_value("dice", gt_empty=n_gt == 0, pred_empty=pred == 0)
        values.append(fixed if fixed is not None else 2.0 * both / (pred + n_gt))
    return np.asarray(values, dtype=np.float64)


def calibrate_thresholds(
    probabilities: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    case_ids: Sequence[str],
    regions: Sequence[str] = REGIONS,
    grid: Sequence[float] = THRESHOLD_GRID,
    default: float = DEFAULT_THRESHOLD,
) -> ThresholdCalibration:
    """The per-region threshold of ``grid`` with the highest mean Dice over the cases.

    Args:
        probabilities: one ``(K, *S)`` array per case, the student's region probabilities.
        truths: one ``(K, *S)`` ground-truth mask per case (same shapes).
        case_ids: the cases' ids (recorded on the card).
        regions: the K region names, in channel order.
        grid: thresholds searched; ``default`` is added if missing, so the calibrated Dice is
            never below the default's.
        default: the threshold compared with (0.5).

    Returns:
        The :class:`~distill.students.card.ThresholdCalibration` (thresholds, mean Dice at
        ``default`` and at the chosen thresholds, the grid and the cases).
    """
    if not probabilities or len(probabilities) != len(truths) or len(truths) != len(case_ids):
        raise ValueError("calibration needs one probability map and one ground truth per case, and at least one case")
    grid = tuple(sorted({float(t) for t in grid} | {float(default)}))
    if not all(0.0 < t < 1.0 for t in grid):
        raise ValueError(f"thresholds must lie strictly between 0 and 1, got {grid}")
    thresholds, at_default, calibrated = {}, {}, {}
    # ties: nearest the default first, then the lower threshold
    preference = sorted(range(len(grid)), key=lambda i: (abs(grid[i] - default), grid[i]))
    for index, region in enumerate(regions):
        mean = np.mean([dice_at_thresholds(p[index], g[index], grid) for p, g in zip(probabilities, truths)], axis=0)
        best = max(preference, key=lambda i: mean[i])  # max keeps the first of equal values
        thresholds[region] = grid[best]
        at_default[region] = float(mean[grid.index(float(default))])
        calibrated[region] = float(mean[best])
    return ThresholdCalibration(thresholds=thresholds, dice_default=at_default, dice_calibrated=calibrated, grid=grid,
                                cases=tuple(case_ids), default_threshold=float(default))  # fmt: skip
