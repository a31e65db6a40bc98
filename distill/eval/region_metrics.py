"""All metrics of one case, one row per tumour region (WT, TC, ET).

BraTS scores each nested region as its own binary problem (Menze et al., IEEE TMI 2015;
Bakas et al., arXiv:1811.02629); this module applies the per-pair metrics of
:mod:`distill.eval` to each region channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from distill.data.conventions import REGIONS
from distill.eval.confusion import sensitivity, specificity
from distill.eval.dice import dice
from distill.eval.hausdorff import hd95
from distill.eval.masks import as_spacing
from distill.eval.volume import volume_ml

# Metric columns in report order; every one is a float per (case, region).
METRICS: tuple[str, ...] = ("dice", "hd95", "sensitivity", "specificity", "gt_volume_ml", "pred_volume_ml")


@dataclass(frozen=True)
class RegionMetrics:
    """Scores of one region of one case. ``hd95`` in mm, volumes in ml."""

    region: str
    dice: float
    hd95: float
    sensitivity: float
    specificity: float
    gt_volume_ml: float
    pred_volume_ml: float

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def region_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | np.ndarray, region: str
) -> RegionMetrics:
    """Every metric for one binary pair of shape ``S`` with voxel ``spacing`` in mm."""
    return RegionMetrics(
        region=region,
        dice=dice(pred, gt),
        hd95=hd95(pred, gt, spacing),
        sensitivity=sensitivity(pred, gt),
        specificity=specificity(pred, gt),
        gt_volume_ml=volume_ml(gt, spacing),
        pred_volume_ml=volume_ml(pred, spacing),
    )


def case_region_metrics(
    pred_regions: np.ndarray,
    gt_regions: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    regions: Sequence[str] = REGIONS,
) -> list[RegionMetrics]:
    """Metrics of one case.

    Args:
        pred_regions: boolean ``(R, *S)``, one channel per name in ``regions`` (WT, TC, ET).
        gt_regions: boolean ``(R, *S)`` in the same channel order.
        spacing: voxel edge lengths in mm along the axes of ``S``.
        regions: channel names.

    Returns:
        ``R`` rows, in channel order; no reduction across regions.
    """
    pred_regions = np.asarray(pred_regions)
    gt_regions = np.asarray(gt_regions)
    if pred_regions.shape != gt_regions.shape:
        raise ValueError(
            f"prediction and ground-truth regions differ in shape: {pred_regions.shape} vs {gt_regions.shape}"
        )
    if pred_regions.ndim < 2 or pred_regions.shape[0] != len(regions):
        raise ValueError(
            f"expected regions of shape ({len(regions)}, ...) for {tuple(regions)}, got {pred_regions.shape}"
        )
    as_spacing(spacing, pred_regions.ndim - 1)
    return [region_metrics(pred_regions[i], gt_regions[i], spacing, name) for i, name in enumerate(regions)]
