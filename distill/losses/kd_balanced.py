"""Region-balanced KD for sigmoid regions: each region's KL normalised by its own extent.

The plain KD term (:func:`~distill.losses.kd_sigmoid.kd_sigmoid`) is a mean over batch,
regions and voxels. In a tumour-centred BraTS patch the enhancing tumour (ET) covers
0.2-5 % of the voxels and the whole tumour (WT) far more, so the voxels of ET weigh under
1 % of the term and WT's background and extent dominate it: a student can ignore ET and
lose almost nothing (design notes §7; this project's 30k students lost ET this way).
Per-region normalisation by the region's extent is one of the alternatives the notes list
(with a soft Dice between student and teacher maps, :mod:`distill.losses.kd_dice`, and
channel-wise spatial distributions, Shu et al., "Channel-wise Knowledge Distillation for
Dense Prediction", ICCV 2021). The form below is Distill's own choice, not a paper's.

Definition, for region ``k`` with tempered per-voxel KL ``kl`` (``T²`` included) and voxel
weight ``w`` (1 unless given; the uncertainty weight multiplies it)::

    E_k      = label_k | (teacher_k >= 0.5)                the region's extent
    inside_k = sum(w kl [E_k]) / sum(w [E_k])               over batch and voxels
    outside_k= sum(w kl [~E_k]) / sum(w [~E_k])
    term_k   = (inside_k + outside_k) / 2                   a part without voxels drops out,
                                                             the other then counts alone
    loss     = mean over k of term_k

So the voxels of each region's extent, however few, carry half of that region's term, and
every region a third of the loss: a 1-voxel ET region weighs as much as a WT region of
thousands of voxels. The background half keeps KD acting against false positives outside
the extent (the voxel mean gives the background almost all of its weight; leaving it out
entirely would let the student mark background freely wherever the label is silent).
Sums run over the batch as well (as a batch Dice does), so a patch without ET does not
make the ET term undefined while another patch of the batch has ET.

Shapes: ``student_logits``, ``teacher_probs`` and ``regions`` ``(B, K, *S)``; ``weight``
``(B, 1, *S)`` or ``(B, K, *S)``; returns a scalar.
"""

from __future__ import annotations

import torch

from distill.losses.kd_sigmoid import DEFAULT_EPS, MAX_BERNOULLI_STD, combined_voxel_weight, kd_sigmoid


def region_extent(
    teacher_probs: torch.Tensor, regions: torch.Tensor | None = None, threshold: float = 0.5
) -> torch.Tensor:
    """Bool ``(B, K, *S)``: where the label (if given) or the teacher (``p >= threshold``) marks the region."""
    extent = teacher_probs.detach() >= threshold
    if regions is not None:
        extent = extent | (regions if regions.dtype == torch.bool else regions > 0.5)
    return extent


def kd_sigmoid_region_balanced(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    regions: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    weight: torch.Tensor | None = None,
    teacher_uncertainty: torch.Tensor | None = None,
    max_uncertainty: float = MAX_BERNOULLI_STD,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Mean over regions of the extent-normalised binary KL (see the module docstring).

    Args:
        student_logits: ``(B, K, *S)`` student logits.
        teacher_probs: ``(B, K, *S)`` teacher probabilities in [0, 1].
        regions: optional ``(B, K, *S)`` expert labels; with none, the extent is the teacher's.
        temperature: ``T > 0``; the per-voxel KL is scaled by ``T²`` as in ``kd_sigmoid``.
        weight: optional voxel weight ``(B, 1, *S)`` or ``(B, K, *S)``, >= 0 (e.g. the 0/1
            mask of :func:`~distill.losses.kd_correction.correct_teacher`).
        teacher_uncertainty: optional ``(B, K, *S)`` uncertainty; multiplies the weight by
            ``1 - u / max_uncertainty``.
        max_uncertainty, eps: as in ``kd_sigmoid``.

    Returns:
        A scalar, 0 when the student matches the teacher.
    """
    kl = kd_sigmoid(student_logits, teacher_probs, temperature=temperature, eps=eps, reduction="none")
    w = combined_voxel_weight(weight, teacher_uncertainty, max_uncertainty, kl)
    w = torch.ones_like(kl) if w is None else w.expand_as(kl)
    extent = region_extent(teacher_probs, regions).expand_as(kl).to(kl.dtype)
    # per region: sums over batch and voxels (every axis but the channel axis)
    axes = (0, *range(2, kl.dim()))
    terms = []
    for part in (extent, 1.0 - extent):
        mass = (w * part).sum(axes)
        terms.append(((w * part * kl).sum(axes) / mass.clamp_min(torch.finfo(kl.dtype).tiny), mass > 0))
    (inside, has_inside), (outside, has_outside) = terms
    count = has_inside.to(kl.dtype) + has_outside.to(kl.dtype)
    per_region = (inside * has_inside + outside * has_outside) / count.clamp_min(1.0)
    return per_region.mean()
