"""Soft Dice between student and teacher probability maps, per region: KD in which every region counts the same.

The soft Dice (Milletari et al., "V-Net", 3DV 2016; as nnU-Net computes it, Isensee et al.,
Nature Methods 2021) is a ratio of sums over a region, so a region's weight in the loss does
not depend on its size: a 1-voxel enhancing tumour counts as much as a whole tumour of
thousands of voxels, where the voxel-mean KL (:func:`~distill.losses.kd_sigmoid.kd_sigmoid`)
gives ET under 1 % of its weight. Design notes §7 list it as one region-balanced
alternative to the voxel mean; using the teacher's soft map as the Dice target is Distill's
choice, not a paper's. Definition, per region ``k``, with ``s = sigmoid(student_logits)``,
teacher probabilities ``q`` and voxel weight ``w``::

    dice_k = (2 sum(w s q) + smooth) / (sum(w s) + sum(w q) + smooth)   sums over batch and voxels
    loss   = 1 - mean over k of dice_k

Sums pool the batch (batch Dice): a patch without ET does not drive the ET Dice to 0 on
its own. No temperature: the Dice compares the maps themselves (``T`` flattens both
sigmoids and would only lower the contrast the Dice measures), so no ``T²`` either.
The loss is not 0 when the student matches a soft teacher (the Dice of a soft map with
itself is below 1); its gradient still pulls the student towards the teacher's regions.

Shapes: ``student_logits`` and ``teacher_probs`` ``(B, K, *S)``; ``weight`` ``(B, 1, *S)``
or ``(B, K, *S)``; returns a scalar in [0, 1].
"""

from __future__ import annotations

import torch

from distill.losses._tensors import check_channels_first, check_probabilities, check_same_shape
from distill.losses.dice_bce import DEFAULT_SMOOTH, soft_dice_loss
from distill.losses.kd_sigmoid import MAX_BERNOULLI_STD, combined_voxel_weight


def kd_soft_dice(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    teacher_uncertainty: torch.Tensor | None = None,
    max_uncertainty: float = MAX_BERNOULLI_STD,
    smooth: float = DEFAULT_SMOOTH,
) -> torch.Tensor:
    """``1 - mean_k`` batch soft Dice of ``sigmoid(student_logits)`` against the teacher's map.

    Args:
        student_logits: ``(B, K, *S)`` student logits.
        teacher_probs: ``(B, K, *S)`` teacher probabilities in [0, 1] (never get a gradient).
        weight: optional voxel weight ``(B, 1, *S)`` or ``(B, K, *S)``, >= 0 (e.g. 0 where the
            teacher contradicts the label); multiplies both maps before the sums.
        teacher_uncertainty: optional ``(B, K, *S)`` uncertainty; multiplies the weight by
            ``1 - u / max_uncertainty``.
        max_uncertainty: as in :func:`~distill.losses.kd_sigmoid.kd_sigmoid`.
        smooth: added to numerator and denominator (>= 0).

    Returns:
        A scalar in [0, 1].
    """
    check_channels_first("student_logits", student_logits)
    check_same_shape("student_logits", student_logits, "teacher_probs", teacher_probs)
    check_probabilities("teacher_probs", teacher_probs)
    probs = torch.sigmoid(student_logits.float() if student_logits.dtype != torch.float64 else student_logits)
    w = combined_voxel_weight(weight, teacher_uncertainty, max_uncertainty, probs)
    return soft_dice_loss(probs, teacher_probs.detach(), batch_dice=True, smooth=smooth, mask=w)
