"""Voxel-wise sensitivity and specificity of a binary mask.

Definitions (as reported by the BraTS benchmark, Menze et al., IEEE TMI 2015, and Bakas
et al., arXiv:1811.02629), with TP, FP, FN, TN counted over the voxels of one case::

    sensitivity = TP / (TP + FN)      (true positive rate, "recall")
    specificity = TN / (TN + FP)      (true negative rate)

Empty masks follow :mod:`distill.eval.policy`. Beyond that table, a rate whose
denominator is zero (sensitivity with no tumour, specificity with no background) is 1.0:
nothing could be got wrong, and the other metrics carry the penalty for false positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.eval.masks import as_mask_pair
from distill.eval.policy import policy_value


@dataclass(frozen=True)
class ConfusionCounts:
    """Voxel counts of one prediction/ground-truth pair."""

    tp: int
    fp: int
    fn: int
    tn: int


def confusion_counts(pred: np.ndarray, gt: np.ndarray) -> ConfusionCounts:
    """TP, FP, FN, TN over all voxels of two same-shape masks (non-zero is foreground)."""
    pred, gt = as_mask_pair(pred, gt)
    tp = int(np.count_nonzero(pred & gt))
    n_pred = int(np.count_nonzero(pred))
    n_gt = int(np.count_nonzero(gt))
    fp = n_pred - tp
    fn = n_gt - tp
    return ConfusionCounts(tp=tp, fp=fp, fn=fn, tn=int(gt.size) - tp - fp - fn)


def _rate(hits: int, misses: int) -> float:
    total = hits + misses
    return 1.0 if total == 0 else hits / total


def sensitivity(pred: np.ndarray, gt: np.ndarray) -> float:
    """TP / (TP + FN) of one pair, in [0, 1]; masks of the same shape ``S``."""
    c = confusion_counts(pred, gt)
    fixed = policy_value("sensitivity", gt_empty=c.tp + c.fn == 0, pred_empty=c.tp + c.fp == 0)
    return fixed if fixed is not None else _rate(c.tp, c.fn)


def specificity(pred: np.ndarray, gt: np.ndarray) -> float:
    """TN / (TN + FP) of one pair, in [0, 1]; masks of the same shape ``S``."""
    c = confusion_counts(pred, gt)
    fixed = policy_value("specificity", gt_empty=c.tp + c.fn == 0, pred_empty=c.tp + c.fp == 0)
    return fixed if fixed is not None else _rate(c.tn, c.fp)
