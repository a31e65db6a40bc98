"""KD that respects the expert labels: teacher-label correction and region-balanced KD.

Every expected value is worked out by hand in the comments (never recorded from the code).
Notation: ``f(q) = KL(Bern(q) || Bern(0.5)) = q ln 2q + (1 - q) ln 2(1 - q)``, the binary KL of a
teacher probability q against a student at logit 0, T = 1 (so ``f(q) = f(1 - q)``).
"""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses import (
    correct_teacher,
    kd_sigmoid,
    kd_sigmoid_corrected,
    kd_sigmoid_region_balanced,
    kd_sigmoid_teachers,
    kd_soft_dice,
    label_contradictions,
)

LOGIT_9 = math.log(9.0)  # logit(0.9); logit(0.1) = -ln 9


def f(q: float) -> float:
    return q * math.log(2 * q) + (1 - q) * math.log(2 * (1 - q))


def row(*values, dtype=torch.float64) -> torch.Tensor:
    """``(1, 1, N)``: one sample, one region, N voxels."""
    return torch.tensor(values, dtype=dtype).reshape(1, 1, -1)


# --------------------------------------------------------------------------- correction

TEACHER = row(0.9, 0.2, 0.6, 0.1)
LABEL = row(1, 1, 0, 0)
# voxel 0: 0.9 on a labelled voxel, agrees; voxel 1: 0.2 < 0.5 on a labelled voxel, contradicts;
# voxel 2: 0.6 >= 0.5 on an unlabelled voxel, contradicts; voxel 3: 0.1 unlabelled, agrees.


def test_contradictions_are_the_voxels_on_the_wrong_side_of_one_half():
    assert label_contradictions(TEACHER, LABEL).flatten().tolist() == [False, True, True, False]
    # a teacher at exactly 0.5 counts as "in the region": it contradicts a 0, not a 1
    assert label_contradictions(row(0.5, 0.5), row(0, 1)).flatten().tolist() == [True, False]


def test_adjust_swaps_the_two_probabilities_where_the_teacher_is_wrong():
    target, weight = correct_teacher(TEACHER, LABEL, "adjust")
    # Bernoulli (p, 1 - p) swapped: 0.2 -> 0.8, 0.6 -> 0.4; the agreeing voxels are untouched
    assert target.flatten().tolist() == pytest.approx([0.9, 0.8, 0.4, 0.1])
    assert weight is None


def test_mask_keeps_the_target_and_zeroes_the_contradicting_voxels():
    target, weight = correct_teacher(TEACHER, LABEL, "mask")
    assert torch.equal(target, TEACHER)
    assert weight.flatten().tolist() == [1.0, 0.0, 0.0, 1.0]


def test_none_is_the_teacher_as_it_is_and_needs_no_labels():
    target, weight = correct_teacher(TEACHER, None, "none")
    assert torch.equal(target, TEACHER) and weight is None
    with pytest.raises(ValueError, match="labels"):
        correct_teacher(TEACHER, None, "adjust")
    with pytest.raises(ValueError, match="correction"):
        correct_teacher(TEACHER, LABEL, "swap")


def test_corrected_kd_values_by_hand():
    student = torch.zeros(1, 1, 4, dtype=torch.float64)
    # adjust: mean of f(0.9), f(0.8), f(0.4), f(0.1) = (2 f(0.9) + f(0.8) + f(0.4)) / 4
    #   f(0.9) = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.368064; f(0.8) = 0.8 ln 1.6 + 0.2 ln 0.4 = 0.192745;
    #   f(0.4) = 0.4 ln 0.8 + 0.6 ln 1.2 = 0.020136; mean 0.237252
    adjusted = kd_sigmoid_corrected(student, TEACHER, LABEL, correction="adjust", temperature=1.0)
    assert adjusted.item() == pytest.approx((2 * f(0.9) + f(0.8) + f(0.4)) / 4, rel=1e-9)
    assert adjusted.item() == pytest.approx(0.237252, abs=1e-6)
    # mask: the mean over voxels 0 and 3 only, f(0.9) and f(0.1), both 0.368064
    masked = kd_sigmoid_corrected(student, TEACHER, LABEL, correction="mask", temperature=1.0)
    assert masked.item() == pytest.approx(f(0.9), rel=1e-9)
    # none: the plain voxel mean (2 f(0.9) + f(0.2) + f(0.6)) / 4
    plain = kd_sigmoid_corrected(student, TEACHER, LABEL, correction="none", temperature=1.0)
    assert plain.item() == pytest.approx((2 * f(0.9) + f(0.2) + f(0.6)) / 4, rel=1e-9)


def test_correction_moves_the_students_gradient_to_the_label_side():
    # student at 0.5 on voxel 1 (labelled, teacher 0.2): plain KD pushes the logit down (out of the
    # region), the adjusted target 0.8 pushes it up; d KL / dz = (s - q) / N = (0.5 - q) / 4
    for correction, expected in (("none", (0.5 - 0.2) / 4), ("adjust", (0.5 - 0.8) / 4), ("mask", 0.0)):
        student = torch.zeros(1, 1, 4, dtype=torch.float64, requires_grad=True)
        kd_sigmoid_corrected(student, TEACHER, LABEL, correction=correction, temperature=1.0).backward()
        # the mask leaves 2 voxels, so for it the mean is over 2, but voxel 1's gradient is 0 anyway
        assert student.grad[0, 0, 1].item() == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------- region balance


def three_regions():
    """8 voxels, regions WT = voxels 0-3, TC = 0-1, ET = voxel 0; teacher 0.9 inside, 0.1 outside."""
    label = torch.zeros(1, 3, 8, dtype=torch.float64)
    label[0, 0, :4] = 1
    label[0, 1, :2] = 1
    label[0, 2, :1] = 1
    teacher = 0.1 + 0.8 * label
    matched = torch.where(label > 0, LOGIT_9, -LOGIT_9)  # student = teacher everywhere: KL 0
    return label, teacher, matched


def test_a_one_voxel_et_error_weighs_as_much_as_a_whole_wt_error_under_region_balance():
    label, teacher, matched = three_regions()
    c = f(0.9)  # the KL of a student at 0.5 against a teacher at 0.9 (or 0.1)
    et_miss = matched.clone()
    et_miss[0, 2, 0] = 0.0  # the one ET voxel missed: KL c there, 0 elsewhere
    wt_miss = matched.clone()
    wt_miss[0, 0, :4] = 0.0  # all four WT voxels missed
    # voxel mean: 24 (region, voxel) pairs. ET miss: c / 24; WT miss: 4c / 24 = c / 6. ET weighs 1/4 of WT.
    assert kd_sigmoid(et_miss, teacher).item() == pytest.approx(c / 24, abs=1e-9)
    assert kd_sigmoid(wt_miss, teacher).item() == pytest.approx(c / 6, abs=1e-9)
    # region balance: the miss is the whole inside part of its region, inside mean c, outside 0:
    # term (c + 0) / 2, and the loss is the mean over 3 regions: c / 6 for either miss.
    assert kd_sigmoid_region_balanced(et_miss, teacher, label).item() == pytest.approx(c / 6, abs=1e-9)
    assert kd_sigmoid_region_balanced(wt_miss, teacher, label).item() == pytest.approx(c / 6, abs=1e-9)


def test_the_voxel_mean_gives_a_one_voxel_region_weight_one_over_n():
    n = 1000
    label = torch.zeros(1, 1, n, dtype=torch.float64)
    label[0, 0, 0] = 1
    teacher = 0.1 + 0.8 * label
    student = torch.where(label > 0, 0.0, -LOGIT_9)  # missed the one voxel only
    c = f(0.9)
    assert kd_sigmoid(student, teacher).item() == pytest.approx(c / n, abs=1e-9)  # weight 1/N
    assert kd_sigmoid_region_balanced(student, teacher, label).item() == pytest.approx(c / 2, abs=1e-9)  # 1/2


def test_the_background_half_still_charges_false_positives():
    label, teacher, matched = three_regions()
    false_positive = matched.clone()
    false_positive[0, 2, 5] = 0.0  # ET marked at 0.5 on a background voxel (teacher 0.1)
    # ET outside part: 7 voxels, mean c / 7, half of the term: c / 14; over 3 regions: c / 42
    expected = f(0.1) / 42
    assert kd_sigmoid_region_balanced(false_positive, teacher, label).item() == pytest.approx(expected, abs=1e-9)


def test_region_extent_is_label_or_teacher_and_an_empty_part_drops_out():
    # 4 voxels, no label, teacher 0.9 on voxel 0 only: extent = {0}. Student 0 everywhere:
    # inside f(0.9); outside f(0.1) on 3 voxels, mean f(0.1) = f(0.9); term = f(0.9).
    teacher = row(0.9, 0.1, 0.1, 0.1)
    student = torch.zeros(1, 1, 4, dtype=torch.float64)
    assert kd_sigmoid_region_balanced(student, teacher).item() == pytest.approx(f(0.9), rel=1e-9)
    # everything in the extent: the outside part is empty, the inside mean counts alone
    everywhere = row(0.9, 0.9, 0.6, 0.6)
    assert kd_sigmoid_region_balanced(student, everywhere).item() == pytest.approx((f(0.9) + f(0.6)) / 2, rel=1e-9)


def test_a_mask_weight_removes_voxels_from_both_parts():
    label, teacher, matched = three_regions()
    et_miss = matched.clone()
    et_miss[0, 2, 0] = 0.0
    weight = torch.ones_like(teacher)
    weight[0, 2, 0] = 0.0  # the missed voxel masked out: ET's inside part is empty, its term 0
    assert kd_sigmoid_region_balanced(et_miss, teacher, label, weight=weight).item() == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------- soft Dice


def test_soft_dice_kd_by_hand():
    # student 0.5 everywhere (logit 0) on 8 voxels, teacher 1 on 2 voxels and 0 elsewhere:
    # sum(s q) = 1, sum(s) = 4, sum(q) = 2: Dice 2 / 6, loss 2/3
    teacher = torch.zeros(1, 1, 8, dtype=torch.float64)
    teacher[0, 0, :2] = 1
    assert kd_soft_dice(torch.zeros(1, 1, 8, dtype=torch.float64), teacher, smooth=0.0).item() == pytest.approx(2 / 3)


def test_soft_dice_kd_charges_a_one_voxel_et_miss_like_a_whole_wt_miss():
    label, teacher_soft, _ = three_regions()
    teacher = label  # a hard teacher: Dice of a perfect student is exactly 1 (up to sigmoid(±40))
    perfect = torch.where(label > 0, 40.0, -40.0).to(torch.float64)
    et_miss, wt_miss = perfect.clone(), perfect.clone()
    et_miss[0, 2, 0] = -40.0  # ET predicted empty: ET Dice 0, the others 1: loss 1/3
    wt_miss[0, 0, :4] = -40.0  # WT predicted empty: WT Dice 0: loss 1/3
    assert kd_soft_dice(perfect, teacher, smooth=0.0).item() == pytest.approx(0.0, abs=1e-9)
    assert kd_soft_dice(et_miss, teacher, smooth=0.0).item() == pytest.approx(1 / 3, abs=1e-9)
    assert kd_soft_dice(wt_miss, teacher, smooth=0.0).item() == pytest.approx(1 / 3, abs=1e-9)


# --------------------------------------------------------------------------- over teachers


def test_kd_over_teachers_combines_correction_and_balance():
    label, teacher, matched = three_regions()
    wrong = teacher.clone()
    wrong[0, 2, 0] = 0.2  # the teacher misses the ET voxel (p < 0.5 on a labelled voxel)
    student = torch.zeros_like(teacher)
    # defaults: exactly kd_sigmoid
    plain = kd_sigmoid_teachers(student, [wrong], [None], temperature=1.0)
    assert torch.equal(plain, kd_sigmoid(student, wrong, temperature=1.0))
    # adjust + region: the same as the region-balanced KL against the adjusted teacher (0.2 -> 0.8)
    adjusted = wrong.clone()
    adjusted[0, 2, 0] = 0.8
    got = kd_sigmoid_teachers(student, [wrong], [None], label, temperature=1.0, correction="adjust", balance="region")
    assert got.item() == pytest.approx(kd_sigmoid_region_balanced(student, adjusted, label).item(), rel=1e-12)
    # mask + dice: the soft Dice with the contradicted voxel weighted 0
    weight = torch.ones_like(wrong)
    weight[0, 2, 0] = 0.0
    got = kd_sigmoid_teachers(student, [wrong, wrong], [None, None], label, correction="mask", balance="dice")
    assert got.item() == pytest.approx(kd_soft_dice(student, wrong, weight=weight).item(), rel=1e-12)
    with pytest.raises(ValueError, match="balance"):
        kd_sigmoid_teachers(student, [wrong], [None], label, balance="channel")


def test_dice_voxel_is_the_soft_dice_plus_the_voxel_kl_by_hand():
    # two voxels per region, the student at 0.5 everywhere, the teacher at 0.75 and 0.25:
    # soft Dice 2·(0.5·0.75 + 0.5·0.25) / (1 + 1) = 0.5, so its loss is 0.5; the binary KL of each
    # voxel is 0.75·ln(0.75/0.5) + 0.25·ln(0.25/0.5) = 0.130812 (both voxels alike).
    teacher = torch.tensor([0.75, 0.25], dtype=torch.float64).reshape(1, 1, 2, 1, 1).repeat(1, 3, 1, 1, 1)
    student = torch.zeros_like(teacher)
    got = kd_sigmoid_teachers(student, [teacher], [None], temperature=1.0, balance="dice_voxel")
    expected = 0.5 + 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert got.item() == pytest.approx(expected, abs=1e-4)
    assert expected == pytest.approx(0.630812, abs=1e-6)
