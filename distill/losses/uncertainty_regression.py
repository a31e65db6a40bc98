"""Regression of the teacher ensemble's uncertainty map: the loss of the student's distilled-uncertainty head.

The teacher cache stores, per voxel and region, the standard deviation ``s`` of the teacher's
per-pass probabilities (5 folds x 8 mirrorings = 40 passes for the default nnU-Net teacher),
quantised as uint8 ``q = round(510 s)`` and decoded to ``s = q / 510`` in [0, 0.5]
(:mod:`distill.cache.quantise`). The head distils that map into one forward pass, as DUDES
(Landgraf et al., "DUDES: Deep Uncertainty Distillation using Ensembles for Semantic
Segmentation", PFG 2024, arXiv 2303.09843) does for a deep ensemble: a second head of the
student, trained jointly with the segmentation, learns the ensemble's per-pixel predictive
uncertainty, so one forward pass replaces the ensemble's many.

The regression loss is Distill's choice. The head predicts ``u_hat = sigmoid(z)`` of the
normalised target ``u = s / 0.5`` in [0, 1] (so the predicted spread is ``0.5 sigmoid(z)``,
:func:`distill.students.uncertainty_map`), and the loss is the Bernoulli cross-entropy with
the fractional target ``u``, the quasi-likelihood of Papke & Wooldridge ("Econometric methods
for fractional response variables", J. Applied Econometrics 1996)::

    loss = mean over batch, regions and voxels of  -(u log u_hat + (1 - u) log(1 - u_hat))

Why this rather than L1 / L2 on ``s``: (1) its minimiser over a voxel population is the
conditional mean of ``u``, so the head estimates the expected teacher spread, as L2 would;
(2) the output stays in the target's range by construction (no clipping); (3) its gradient
in ``z`` is ``u_hat - u``, never vanishing where the sigmoid saturates, which L2 on
``sigmoid(z)`` does, and computed with ``binary_cross_entropy_with_logits`` it is stable for
any ``z``; (4) L1 would estimate the conditional median, which is 0 wherever more than half
of similar-looking voxels have a certain teacher (most of the brain), and the map would
vanish. The value is not 0 at a perfect fit (it is the entropy of ``u`` there); its gradient
is the KL divergence's. The quantised target is off by at most 1/1020 in ``s`` (1/510 in
``u``), far below what a tiny head resolves.

Shapes: ``uncertainty_logits`` and ``teacher_uncertainty`` ``(B, K, *S)``; returns a scalar >= 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses._tensors import check_channels_first, check_same_shape
from distill.losses.kd_sigmoid import MAX_BERNOULLI_STD


def uncertainty_regression(
    uncertainty_logits: torch.Tensor,
    teacher_uncertainty: torch.Tensor,
    *,
    max_uncertainty: float = MAX_BERNOULLI_STD,
) -> torch.Tensor:
    """Mean Bernoulli cross-entropy of ``sigmoid(uncertainty_logits)`` against ``teacher_uncertainty / 0.5``.

    Args:
        uncertainty_logits: ``(B, K, *S)`` raw outputs of the student's uncertainty head.
        teacher_uncertainty: ``(B, K, *S)`` the cache's per-region standard deviation of the
            teacher's passes, in ``[0, max_uncertainty]`` (never gets a gradient).
        max_uncertainty: the spread that maps to 1 (default 0.5, the largest standard
            deviation of values in [0, 1], the cache's upper bound).

    Returns:
        A scalar: the mean over every batch item, region and voxel.

    Raises:
        ValueError: shapes differ, fewer than 3 dimensions, ``max_uncertainty <= 0``, or a
            target outside ``[0, max_uncertainty]``.
    """
    check_channels_first("uncertainty_logits", uncertainty_logits)
    check_same_shape("uncertainty_logits", uncertainty_logits, "teacher_uncertainty", teacher_uncertainty)
    if not max_uncertainty > 0:
        raise ValueError(f"max_uncertainty must be > 0, got {max_uncertainty}")
    target = teacher_uncertainty.detach().float() / max_uncertainty
    if target.numel() and (float(target.min()) < -1e-6 or float(target.max()) > 1 + 1e-6):
        raise ValueError(f"teacher_uncertainty must lie in [0, {max_uncertainty}], got "
                         f"[{float(teacher_uncertainty.min()):.4g}, {float(teacher_uncertainty.max()):.4g}]")
    logits = uncertainty_logits if uncertainty_logits.dtype == torch.float64 else uncertainty_logits.float()
    return F.binary_cross_entropy_with_logits(logits, target.clamp(0.0, 1.0).to(logits.dtype))


__all__ = ["uncertainty_regression"]
