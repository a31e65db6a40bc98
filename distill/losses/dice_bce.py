"""Supervised segmentation losses against the ground truth: soft Dice + BCE, soft Dice + CE.

Soft Dice (Milletari et al., "V-Net", 3DV 2016), written as nnU-Net computes it
(Isensee et al., Nature Methods 2021)::

    dice = (2 * sum(p * g) + smooth) / (sum(p) + sum(g) + smooth),   loss = 1 - mean(dice)

where ``p`` are predicted probabilities and ``g`` the ground truth, summed over voxels.

* ``batch_dice=False`` (per-sample Dice): one Dice per sample and channel, then the mean
  over both. A sample whose region is empty scores ``smooth / (sum(p) + smooth)``, so any
  false positive there drives its Dice towards 0: per-sample Dice punishes false positives
  in tumour-free patches hard.
* ``batch_dice=True`` (batch Dice): the sums run over the batch as well, one Dice per
  channel, then the mean over channels. Empty samples only matter through the pooled sums,
  which gives smoother gradients when many patches hold little or no tumour.

``smooth`` (default 1e-5, nnU-Net's value) keeps the ratio defined when both sums are 0
and barely changes it otherwise. A channel empty in both prediction and ground truth has
Dice 1 (loss 0), with ``smooth = 0`` as well.

For BraTS regions (whole tumour, tumour core, enhancing tumour overlap) the model has one
sigmoid channel per region: :func:`region_dice_bce_loss`. For mutually exclusive labels
(one softmax over classes): :func:`label_dice_ce_loss`. Never mix them: a softmax across
overlapping regions cannot represent a voxel that lies in all three.

Every loss here returns a scalar that is a mean over batch, channels and voxels (Dice: a
mean of ratios of sums), so it does not grow with the patch volume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses._tensors import (
    check_channels_first,
    check_same_shape,
    voxel_weight_like,
    weighted_voxel_mean,
)

DEFAULT_SMOOTH = 1e-5


def soft_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    batch_dice: bool = False,
    smooth: float = DEFAULT_SMOOTH,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1 - mean soft Dice`` of probabilities against a (soft or hard) target.

    Args:
        probs: predicted probabilities ``(B, K, *S)``.
        target: ground truth ``(B, K, *S)``, bool or float in [0, 1].
        batch_dice: pool the sums over the batch (see the module docstring).
        smooth: added to numerator and denominator; must be >= 0.
        mask: optional ``(B, 1, *S)`` or ``(B, K, *S)`` voxel weight, e.g. 0 on padding;
            both ``probs`` and ``target`` are multiplied by it before the sums.

    Returns:
        A scalar in [0, 1]: 1 minus the mean Dice over samples and channels (per-sample) or
        over channels (batch Dice).
    """
    check_channels_first("probs", probs)
    check_same_shape("probs", probs, "target", target)
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    target = target.to(dtype=probs.dtype)
    weight = voxel_weight_like(mask, probs, "mask")
    if weight is not None:
        probs = probs * weight
        target = target * weight
    axes = tuple(range(2, probs.dim()))
    if batch_dice:
        axes = (0, *axes)
    overlap = (probs * target).sum(axes)
    total = probs.sum(axes) + target.sum(axes)
    denominator = total + smooth
    ratio = (2.0 * overlap + smooth) / denominator.clamp_min(torch.finfo(probs.dtype).tiny)
    dice = torch.where(denominator > 0, ratio, torch.ones_like(ratio))  # both empty, smooth 0: Dice 1
    return 1.0 - dice.mean()


def region_bce_loss(logits: torch.Tensor, regions: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of sigmoid region logits, mean over batch, regions and voxels.

    Args:
        logits: student logits ``(B, K, *S)``, one independent sigmoid per region.
        regions: ground-truth regions ``(B, K, *S)``, bool or float in [0, 1].
        mask: optional voxel weight ``(B, 1, *S)`` or ``(B, K, *S)``; the result is then
            ``sum(w * bce) / sum(w)``.
    """
    check_channels_first("logits", logits)
    check_same_shape("logits", logits, "regions", regions)
    bce = F.binary_cross_entropy_with_logits(logits, regions.to(dtype=logits.dtype), reduction="none")
    return weighted_voxel_mean(bce, voxel_weight_like(mask, logits, "mask"))


def region_dice_loss(
    logits: torch.Tensor,
    regions: torch.Tensor,
    *,
    batch_dice: bool = False,
    smooth: float = DEFAULT_SMOOTH,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft Dice loss on ``sigmoid(logits)`` per region; see :func:`soft_dice_loss`.

    Args:
        logits: ``(B, K, *S)`` region logits, one independent sigmoid per region.
        regions: ``(B, K, *S)`` ground-truth regions, bool or float in [0, 1].
        batch_dice, smooth, mask: as in :func:`soft_dice_loss`.

    Returns:
        A scalar in [0, 1].
    """
    check_channels_first("logits", logits)
    return soft_dice_loss(torch.sigmoid(logits), regions, batch_dice=batch_dice, smooth=smooth, mask=mask)


def region_dice_bce_loss(
    logits: torch.Tensor,
    regions: torch.Tensor,
    *,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    batch_dice: bool = False,
    smooth: float = DEFAULT_SMOOTH,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``dice_weight * Dice loss + bce_weight * BCE`` for sigmoid region outputs.

    Args:
        logits: ``(B, K, *S)`` region logits (K = 3 for BraTS WT, TC, ET).
        regions: ``(B, K, *S)`` ground-truth regions, bool or float.
        dice_weight, bce_weight: non-negative weights of the two parts.
        batch_dice, smooth, mask: as in :func:`soft_dice_loss`; ``mask`` also weights the BCE.

    Returns:
        A scalar; see :func:`region_dice_loss` and :func:`region_bce_loss` for the parts.
    """
    _check_part_weights(dice_weight, bce_weight)
    dice = region_dice_loss(logits, regions, batch_dice=batch_dice, smooth=smooth, mask=mask)
    bce = region_bce_loss(logits, regions, mask=mask)
    return dice_weight * dice + bce_weight * bce


def label_dice_ce_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    include_background: bool = False,
    batch_dice: bool = False,
    smooth: float = DEFAULT_SMOOTH,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``dice_weight * Dice loss + ce_weight * cross-entropy`` for softmax label outputs.

    Args:
        logits: ``(B, C, *S)`` class logits, one softmax over ``C`` mutually exclusive
            classes, class 0 the background.
        labels: integer labels ``(B, *S)`` or ``(B, 1, *S)`` with values in ``[0, C)``.
        include_background: whether class 0 takes part in the Dice (the cross-entropy
            always covers every class). nnU-Net leaves it out by default, as here.
        batch_dice, smooth: as in :func:`soft_dice_loss`.
        mask: optional ``(B, 1, *S)`` voxel weight for both parts.

    Returns:
        A scalar.

    Raises:
        ValueError: on shape mismatches, labels out of range, or ``include_background=False``
        with a single class (nothing left for the Dice).
    """
    _check_part_weights(dice_weight, ce_weight)
    check_channels_first("logits", logits)
    labels = _labels_without_channel(labels, logits)
    num_classes = logits.shape[1]
    if not include_background and num_classes < 2:
        raise ValueError("include_background=False needs at least 2 classes")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min().item()}, {labels.max().item()}]")
    weight = None if mask is None else voxel_weight_like(mask, logits[:, :1], "mask")
    ce = F.cross_entropy(logits, labels, reduction="none").unsqueeze(1)
    ce_loss = weighted_voxel_mean(ce, weight)
    one_hot = F.one_hot(labels, num_classes).movedim(-1, 1).to(dtype=logits.dtype)
    probs = torch.softmax(logits, dim=1)
    first = 0 if include_background else 1
    dice_loss = soft_dice_loss(probs[:, first:], one_hot[:, first:], batch_dice=batch_dice, smooth=smooth, mask=weight)
    return dice_weight * dice_loss + ce_weight * ce_loss


def _labels_without_channel(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Accept ``(B, *S)`` or ``(B, 1, *S)`` integer labels; return ``(B, *S)`` int64."""
    if torch.is_floating_point(labels) or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    expected = (logits.shape[0], *logits.shape[2:])
    if labels.dim() == logits.dim() and labels.shape[1] == 1:
        labels = labels[:, 0]
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels must have shape {expected} or {(expected[0], 1, *expected[1:])}, got {tuple(labels.shape)}"
        )
    return labels.long()


def _check_part_weights(*weights: float) -> None:
    if any(w < 0 for w in weights):
        raise ValueError(f"loss part weights must be >= 0, got {weights}")
