"""Knowledge distillation for sigmoid region outputs: per-channel binary KL, tempered, T².

Hinton et al., "Distilling the Knowledge in a Neural Network", arXiv:1503.02531 (2015),
applied per voxel and per region. BraTS regions (whole tumour ⊃ tumour core ⊃ enhancing
tumour) overlap, so every channel is its own Bernoulli distribution and the loss never
takes a softmax across channels: changing one region's teacher probability changes the
loss of that channel only.

Definition, for student logit ``z``, teacher probability ``p`` and temperature ``T``::

    t   = logit(clamp(p, eps, 1 - eps)) / T          teacher's tempered logit
    q   = sigmoid(t),   s = sigmoid(z / T)           tempered Bernoulli parameters
    kl  = q * (log q - log s) + (1 - q) * (log(1 - q) - log(1 - s))
    loss = T² * weighted mean of kl over batch, channels and voxels

All logarithms are taken as ``logsigmoid`` of the tempered logits, which is exact and
finite for any logit. KL differs from the binary cross-entropy ``-q log s - (1-q) log(1-s)``
only by the teacher's entropy, a constant for the student: the gradients are the same,
and the KL is 0 when the student matches the teacher.

Teacher probabilities, not logits. The teacher cache stores probabilities quantised to
1/255 (``q = round(255 p)``), so cached values can be exactly 0 or 1, whose logits are
infinite. They are clamped to ``[eps, 1 - eps]`` before the logit. The default
``eps = 1/510`` is half a quantisation step: a cached 0 only says ``p < 1/510``, and
1/510 is the largest value consistent with it, so the clamp moves no cached value out of
its quantisation bin and keeps the cached levels ordered (0 -> 1/510 < 1/255). A cached 0
becomes the tempered target ``sigmoid(logit(1/510) / T)``, about 0.0020 at T = 1 and 0.042
at T = 2.

T² scaling (Hinton et al.): the gradient of the tempered KL with respect to ``z`` shrinks
like ``1/T²`` for large ``T``; multiplying by ``T²`` keeps the KD term's size comparable
across temperatures (for large ``T``, ``T² kl -> (z - logit p)² / 8``).

Patch volume: the reduction is a mean over voxels, never a sum, so tiling a patch 2x along
each axis gives the same loss.

Voxel weights. ``weight`` ``(B, 1, *S)`` or ``(B, K, *S)``, >= 0, e.g. 0 on padding; the mean
becomes ``sum(w * kl) / sum(w)``. ``teacher_uncertainty`` ``(B, K, *S)`` (the cache's
per-region ensemble standard deviation) multiplies the weight by
:func:`uncertainty_weight`, ``1 - u / u_max``. That down-weighting of uncertain teacher
voxels is Distill's own choice, not taken from a paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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

#: Default clamp of teacher probabilities: half of the cache's 1/255 quantisation step.
DEFAULT_EPS = 1.0 / 510.0

#: Largest standard deviation of a quantity in [0, 1] (reached by a 50/50 split of 0 and 1);
#: the cache stores teacher uncertainty as such a standard deviation.
MAX_BERNOULLI_STD = 0.5


def kd_sigmoid(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    *,
    temperature: float = 1.0,
    weight: torch.Tensor | None = None,
    teacher_uncertainty: torch.Tensor | None = None,
    max_uncertainty: float = MAX_BERNOULLI_STD,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
) -> torch.Tensor:
    """Per-channel binary KL(teacher || student) of tempered sigmoids, times ``T²``.

    Args:
        student_logits: ``(B, K, *S)`` student logits, one sigmoid per region.
        teacher_probs: ``(B, K, *S)`` teacher probabilities in [0, 1] (floats; exact 0 and
            1 allowed). Never receives a gradient.
        temperature: ``T > 0``; 1 means no tempering.
        weight: optional voxel weight ``(B, 1, *S)`` or ``(B, K, *S)``, >= 0.
        teacher_uncertainty: optional ``(B, K, *S)`` (or ``(B, 1, *S)``) teacher
            uncertainty in ``[0, max_uncertainty]``; multiplies the weight by
            ``1 - u / max_uncertainty``.
        max_uncertainty: the uncertainty that gets weight 0 (default 0.5, the largest
            standard deviation of a probability).
        eps: clamp of teacher probabilities before the logit, in (0, 0.5).
        reduction: ``"mean"`` (the weighted voxel mean, a scalar) or ``"none"`` (the
            per-voxel ``T² * kl`` map ``(B, K, *S)``, weights not applied).

    Returns:
        A scalar (``"mean"``) or a ``(B, K, *S)`` tensor (``"none"``).

    Raises:
        ValueError: shape mismatch, probabilities outside [0, 1], bad ``eps`` or
            temperature, negative weights, an unknown reduction, or a weight or
            uncertainty with ``reduction="none"`` (they would be silently unused).
        TypeError: non-float teacher probabilities (e.g. raw uint8 cache values).
    """
    kl = _tempered_binary_kl(student_logits, teacher_probs, temperature, eps)
    scaled = temperature**2 * kl
    if reduction == "none":
        if weight is not None or teacher_uncertainty is not None:
            raise ValueError("weight and teacher_uncertainty are only used with reduction='mean'")
        return scaled
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    voxel_weight = combined_voxel_weight(weight, teacher_uncertainty, max_uncertainty, scaled)
    return weighted_voxel_mean(scaled, voxel_weight)


def uncertainty_weight(uncertainty: torch.Tensor, max_uncertainty: float = MAX_BERNOULLI_STD) -> torch.Tensor:
    """``1 - clamp(u / max_uncertainty, 0, 1)``: weight 1 for a certain teacher, 0 at the maximum.

    Distill's own choice of down-weighting (not from a paper). With the cache's
    per-region ensemble standard deviation, ``max_uncertainty = 0.5`` is the largest
    possible value, so the weight is ``1 - 2 * std``. Returned detached.
    """
    if not max_uncertainty > 0:
        raise ValueError(f"max_uncertainty must be > 0, got {max_uncertainty}")
    normalised = (uncertainty.detach() / max_uncertainty).clamp(0.0, 1.0)
    return 1.0 - normalised


def tempered_teacher_logits(teacher_probs: torch.Tensor, temperature: float, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``logit(clamp(p, eps, 1 - eps)) / T`` of teacher probabilities, detached."""
    check_eps(eps)
    check_temperature(temperature)
    p = teacher_probs.detach().clamp(eps, 1.0 - eps)
    return (torch.log(p) - torch.log1p(-p)) / temperature


def _tempered_binary_kl(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float, eps: float
) -> torch.Tensor:
    """Per-element ``KL(Bernoulli(q) || Bernoulli(s))`` of the tempered distributions, ``(B, K, *S)``."""
    check_channels_first("student_logits", student_logits)
    check_same_shape("student_logits", student_logits, "teacher_probs", teacher_probs)
    check_probabilities("teacher_probs", teacher_probs)
    dtype = compute_dtype(student_logits, teacher_probs)
    teacher_t = tempered_teacher_logits(teacher_probs.to(dtype), temperature, eps)
    student_t = student_logits.to(dtype) / temperature
    q = torch.sigmoid(teacher_t)
    log_q, log_not_q = F.logsigmoid(teacher_t), F.logsigmoid(-teacher_t)
    log_s, log_not_s = F.logsigmoid(student_t), F.logsigmoid(-student_t)
    return q * (log_q - log_s) + (1.0 - q) * (log_not_q - log_not_s)


def combined_voxel_weight(
    weight: torch.Tensor | None,
    teacher_uncertainty: torch.Tensor | None,
    max_uncertainty: float,
    values: torch.Tensor,
) -> torch.Tensor | None:
    """Product of the voxel weight and the uncertainty weight, either of which may be absent;
    checked against ``values (B, K, *S)`` and detached (``None`` when both are absent)."""
    checked = voxel_weight_like(weight, values, "weight")
    if teacher_uncertainty is None:
        return checked
    from_uncertainty = voxel_weight_like(
        uncertainty_weight(teacher_uncertainty, max_uncertainty), values, "teacher_uncertainty"
    )
    return from_uncertainty if checked is None else checked * from_uncertainty

