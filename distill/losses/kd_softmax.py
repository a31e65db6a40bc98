"""Knowledge distillation for softmax label outputs: KL over classes, tempered, T².

Hinton et al., "Distilling the Knowledge in a Neural Network", arXiv:1503.02531 (2015),
applied per voxel. Use it only for teachers whose classes are mutually exclusive (one
softmax over labels); for overlapping sigmoid regions use :mod:`distill.losses.kd_sigmoid`.

Definition, for student logits ``z`` and teacher probabilities ``p`` over ``C`` classes::

    q   = softmax(log(clamp(p, eps, 1)) / T)     teacher, tempered and renormalised
    s   = softmax(z / T)                         student, tempered
    kl  = sum_c q_c * (log q_c - log s_c)        per voxel
    loss = T² * weighted mean of kl over batch and voxels

The teacher comes as probabilities (the cache quantises them to 1/255, so some are exactly
0 and a voxel's values need not sum to exactly 1). Clamping to ``eps`` before the log keeps
every tempered teacher probability positive; the softmax renormalises. ``eps`` defaults to
1/510, half a quantisation step (see :mod:`distill.losses.kd_sigmoid` for the reasoning).
With ``T = 1`` and a teacher already normalised with no value under ``eps``, ``q = p``.

T² scaling keeps the term's gradient size comparable across temperatures (Hinton et al.).
The reduction is a mean over voxels (the sum over classes is part of the per-voxel KL),
so the loss does not grow with the patch volume.
"""

from __future__ import annotations

import torch

from distill.losses._tensors import (
    check_channels_first,
    check_eps,
    check_probabilities,
    check_same_shape,
    check_temperature,
    compute_dtype,
    voxel_weight_like,
    weighted_voxel_mean,
)
from distill.losses.kd_sigmoid import DEFAULT_EPS


def kd_softmax(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    *,
    temperature: float = 1.0,
    weight: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL(teacher || student) over classes of tempered softmaxes, times ``T²``.

    Args:
        student_logits: ``(B, C, *S)`` student class logits.
        teacher_probs: ``(B, C, *S)`` teacher class probabilities in [0, 1]. Never
            receives a gradient.
        temperature: ``T > 0``.
        weight: optional voxel weight ``(B, 1, *S)``, >= 0 (per-class weights are
            rejected: the KL is one number per voxel).
        eps: lower clamp of teacher probabilities before the log, in (0, 0.5).
        reduction: ``"mean"`` (scalar) or ``"none"`` (per-voxel ``T² * kl``, ``(B, 1, *S)``,
            weight not applied).

    Returns:
        A scalar (``"mean"``) or ``(B, 1, *S)`` (``"none"``).

    Raises:
        ValueError: shape mismatch, fewer than 2 classes, probabilities outside [0, 1],
            bad ``eps``/temperature/weight, unknown reduction, weight with ``"none"``.
        TypeError: non-float teacher probabilities.
    """
    check_channels_first("student_logits", student_logits)
    check_same_shape("student_logits", student_logits, "teacher_probs", teacher_probs)
    if student_logits.shape[1] < 2:
        raise ValueError("kd_softmax needs at least 2 classes; use kd_sigmoid for a single sigmoid channel")
    check_probabilities("teacher_probs", teacher_probs)
    check_eps(eps)
    check_temperature(temperature)
    dtype = compute_dtype(student_logits, teacher_probs)
    log_q = torch.log_softmax(torch.log(teacher_probs.detach().to(dtype).clamp_min(eps)) / temperature, dim=1)
    log_s = torch.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    kl = (log_q.exp() * (log_q - log_s)).sum(dim=1, keepdim=True)
    scaled = temperature**2 * kl
    if reduction == "none":
        if weight is not None:
            raise ValueError("weight is only used with reduction='mean'")
        return scaled
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return weighted_voxel_mean(scaled, voxel_weight_like(weight, scaled, "weight"))
