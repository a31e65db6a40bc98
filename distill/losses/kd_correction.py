"""Teacher–label correction for region KD: knowledge adjustment, or masking the contradictions.

Wen, Lai, Qian, "Preparing lessons: Improve knowledge distillation with better supervision",
Neurocomputing 454 (2021) 25-33 (arXiv:1911.07471). Knowledge adjustment (KA): where the
teacher's prediction is wrong, its soft target is corrected before the student learns from
it, by swapping the probability of the class the teacher predicted with that of the true
class, so the true class holds the largest probability and the teacher's other "dark
knowledge" (how sure it was) is kept.

For sigmoid regions every voxel and region is its own Bernoulli ``(p, 1 - p)`` over
{in region, not in region}, so with two classes the swap is simply ``p -> 1 - p``. The
teacher contradicts the expert label ``y`` (0 or 1) where::

    contradicts = (p >= 0.5 and y == 0) or (p < 0.5 and y == 1)

Modes of :func:`correct_teacher`:

* ``"adjust"``: knowledge adjustment, ``p' = 1 - p`` where the teacher contradicts the label
  (e.g. ``p = 0.2`` on a labelled voxel becomes ``0.8``; ``p = 0.6`` on an unlabelled one
  becomes ``0.4``), ``p' = p`` elsewhere. A teacher at exactly 0.5 on a voxel labelled 0 stays
  0.5 (the swap of a tie is the tie).
* ``"mask"``: the target is left alone and the contradicting voxels get KD weight 0 (per
  voxel and region), so the KD term is the mean over the voxels where teacher and label agree;
  the supervised term alone teaches the rest.
* ``"none"``: the teacher's map as it is.

Shapes: ``teacher_probs`` and ``regions`` ``(B, K, *S)``, regions bool or float (> 0.5 is
in the region). Correction acts on the probabilities, before any temperature: the
tempered target of a corrected voxel is the tempered ``p'``.
"""

from __future__ import annotations

import torch

from distill.losses._tensors import check_channels_first, check_probabilities, check_same_shape
from distill.losses.kd_sigmoid import DEFAULT_EPS, MAX_BERNOULLI_STD, kd_sigmoid

#: Values of ``correction`` (``TrainConfig.kd_correction``).
CORRECTIONS = ("none", "mask", "adjust")


def label_contradictions(teacher_probs: torch.Tensor, regions: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Bool ``(B, K, *S)``: the teacher is on the other side of ``threshold`` from the label.

    ``p >= threshold`` where the label is 0, or ``p < threshold`` where it is 1.
    """
    check_channels_first("teacher_probs", teacher_probs)
    check_same_shape("teacher_probs", teacher_probs, "regions", regions)
    teacher_in = teacher_probs.detach() >= threshold
    label_in = regions > 0.5 if regions.dtype != torch.bool else regions
    return teacher_in != label_in


def correct_teacher(
    teacher_probs: torch.Tensor, regions: torch.Tensor | None, mode: str = "adjust"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The KD target and KD voxel weight after correcting the teacher against the label.

    Args:
        teacher_probs: ``(B, K, *S)`` teacher probabilities in [0, 1].
        regions: ``(B, K, *S)`` expert labels (bool or float); may be ``None`` only with
            ``mode="none"``.
        mode: ``"adjust"`` (``p -> 1 - p`` where contradicted), ``"mask"`` (weight 0 there)
            or ``"none"``.

    Returns:
        ``(target, weight)``: the target probabilities ``(B, K, *S)`` (detached) and a
        ``(B, K, *S)`` float weight of 1 and 0 for ``"mask"``, ``None`` otherwise.

    Raises:
        ValueError: an unknown mode, or a correction asked for without labels.
    """
    if mode not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {mode!r}")
    check_probabilities("teacher_probs", teacher_probs)
    teacher_probs = teacher_probs.detach()
    if mode == "none":
        return teacher_probs, None
    if regions is None:
        raise ValueError(f"correction {mode!r} needs the expert labels (regions)")
    wrong = label_contradictions(teacher_probs, regions)
    if mode == "adjust":
        return torch.where(wrong, 1.0 - teacher_probs, teacher_probs), None
    return teacher_probs, (~wrong).to(teacher_probs.dtype)


def kd_sigmoid_corrected(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    regions: torch.Tensor,
    *,
    correction: str = "adjust",
    temperature: float = 1.0,
    weight: torch.Tensor | None = None,
    teacher_uncertainty: torch.Tensor | None = None,
    max_uncertainty: float = MAX_BERNOULLI_STD,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """:func:`~distill.losses.kd_sigmoid.kd_sigmoid` against the label-corrected teacher.

    Args:
        student_logits: ``(B, K, *S)`` student logits.
        teacher_probs: ``(B, K, *S)`` teacher probabilities.
        regions: ``(B, K, *S)`` expert labels.
        correction: ``"adjust"``, ``"mask"`` or ``"none"`` (see :func:`correct_teacher`).
        temperature, weight, teacher_uncertainty, max_uncertainty, eps: as in ``kd_sigmoid``;
            a mask multiplies ``weight``.

    Returns:
        A scalar: ``T²`` times the weighted voxel mean of the binary KL (over batch, regions
        and voxels; with ``"mask"`` only over the voxels where teacher and label agree).
    """
    target, mask = correct_teacher(teacher_probs, regions, correction)
    if mask is not None:
        weight = mask if weight is None else weight * mask
    return kd_sigmoid(student_logits, target, temperature=temperature, weight=weight,
                      teacher_uncertainty=teacher_uncertainty, max_uncertainty=max_uncertainty, eps=eps)  # fmt: skip
