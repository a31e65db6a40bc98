"""Knowledge distillation from several teachers at once: the mean of the per-teacher KD terms.

Teacher-assistant chains (TAKD: Mirzadeh et al., "Improved Knowledge Distillation via
Teacher Assistant", AAAI 2020) distil a student from the model one step up the chain;
densely guided distillation (DGKD: Son et al., "Densely Guided Knowledge Distillation
using Multiple Teacher Assistants", ICCV 2021) uses every larger model of the chain at
once and drops teachers at random per batch. Both need one term over a varying list of
teachers::

    loss = mean over teachers t of KD(student_logits, teacher_t)

where KD is :func:`~distill.losses.kd_sigmoid.kd_sigmoid` for sigmoid regions or
:func:`~distill.losses.kd_softmax.kd_softmax` for softmax labels (Hinton et al. 2015),
each tempered and scaled by ``T²``. Every teacher counts the same; which teachers are in
the list for a batch (cache, live assistants, the DGKD drop) is the trainer's choice.

Shapes: ``student_logits`` ``(B, K, *S)``; ``teachers`` a non-empty sequence of teacher
probabilities, each ``(B, K, *S)``; ``uncertainties`` one entry per teacher, a
``(B, K, *S)`` standard deviation or ``None`` (a live teacher has none). Returns a scalar.

For sigmoid regions, two options change each teacher's term (both off by default, which is
the plain voxel-mean KL): ``correction`` corrects every teacher's map against the expert
labels ``regions`` ``(B, K, *S)`` first (:mod:`distill.losses.kd_correction`, Wen et al.,
Neurocomputing 2021), and ``balance`` picks the term: ``"voxel"`` the voxel-mean KL,
``"region"`` the extent-normalised KL (:mod:`distill.losses.kd_balanced`), ``"dice"`` a soft
Dice between student and teacher maps (:mod:`distill.losses.kd_dice`; no temperature), and
``"dice_voxel"`` the sum of the two, soft Dice plus voxel-mean KL: at ``T = 1`` the supervised
term's own Dice + BCE (nnU-Net's loss) with the teacher's map in place of the label (a higher
``T`` tempers and scales the KL part only), so KD weighs false
positives and false negatives as the supervised term does. The region form weighs each part
by its own extent, which makes a false positive outside a small region cost a fraction of a
missed voxel inside it (its students over-segmented, with scattered components, on the
real-data protocol); the voxel mean does the reverse and let ET vanish at 30k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distill.losses.kd_balanced import kd_sigmoid_region_balanced
from distill.losses.kd_correction import CORRECTIONS, correct_teacher
from distill.losses.kd_dice import kd_soft_dice
from distill.losses.kd_sigmoid import kd_sigmoid
from distill.losses.kd_softmax import kd_softmax

#: Values of ``balance`` (``TrainConfig.kd_balance``).
BALANCES = ("voxel", "region", "dice", "dice_voxel")


def kd_sigmoid_teachers(
    student_logits: torch.Tensor,
    teachers: Sequence[torch.Tensor],
    uncertainties: Sequence[torch.Tensor | None],
    regions: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    use_uncertainty: bool = False,
    correction: str = "none",
    balance: str = "voxel",
) -> torch.Tensor:
    """Mean :func:`kd_sigmoid` over ``teachers``; with ``use_uncertainty`` each teacher that has
    an uncertainty map is down-weighted by it (:func:`~distill.losses.kd_sigmoid.uncertainty_weight`).

    ``correction`` (``"none"``, ``"mask"``, ``"adjust"``; needs ``regions``) and ``balance``
    (``"voxel"``, ``"region"``, ``"dice"``, ``"dice_voxel"``): see the module docstring.
    """
    if correction not in CORRECTIONS or balance not in BALANCES:
        raise ValueError(f"correction must be one of {CORRECTIONS} and balance one of {BALANCES}; "
                         f"got {correction!r}, {balance!r}")  # fmt: skip
    losses = []
    for probs, uncertainty in zip(teachers, uncertainties):
        weight_args = {"teacher_uncertainty": uncertainty} if (use_uncertainty and uncertainty is not None) else {}
        if correction == "none" and balance == "voxel":
            losses.append(kd_sigmoid(student_logits, probs, temperature=temperature, **weight_args))
            continue
        target, mask = correct_teacher(probs, regions, correction)
        if mask is not None:
            weight_args["weight"] = mask
        if balance == "voxel":
            losses.append(kd_sigmoid(student_logits, target, temperature=temperature, **weight_args))
        elif balance == "region":
            losses.append(kd_sigmoid_region_balanced(student_logits, target, regions, temperature=temperature,
                                                     **weight_args))  # fmt: skip
        elif balance == "dice":
            losses.append(kd_soft_dice(student_logits, target, **weight_args))
        else:  # dice_voxel
            losses.append(kd_soft_dice(student_logits, target, **weight_args)
                          + kd_sigmoid(student_logits, target, temperature=temperature, **weight_args))
    return torch.stack(losses).mean()


def kd_softmax_teachers(
    student_logits: torch.Tensor,
    teachers: Sequence[torch.Tensor],
    uncertainties: Sequence[torch.Tensor | None] | None = None,
    *,
    temperature: float = 1.0,
    use_uncertainty: bool = False,
) -> torch.Tensor:
    """Mean :func:`kd_softmax` over ``teachers``.

    ``uncertainties`` and ``use_uncertainty`` are accepted so that both output kinds take
    the same arguments, and ignored: the cache's uncertainty is a per-region standard
    deviation, which has no meaning for softmax classes.
    """
    return torch.stack([kd_softmax(student_logits, probs, temperature=temperature) for probs in teachers]).mean()
