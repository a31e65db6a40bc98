"""Supervised, KD, boundary and region-affinity losses: hand-computed values and invariances.

Expected numbers are derived by hand in the comments (never recorded from the code).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.losses import (
    boundary_loss,
    boundary_loss_from_regions,
    importance_map_loss,
    kd_sigmoid,
    kd_softmax,
    label_dice_ce_loss,
    region_affinity_loss,
    region_bce_loss,
    region_dice_bce_loss,
    region_dice_loss,
    signed_distance_map,
    signed_distance_maps,
    soft_dice_loss,
    uncertainty_weight,
)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def tile2(x: torch.Tensor) -> torch.Tensor:
    """Tile a (B, C, D, H, W) tensor 2x along each spatial axis."""
    return x.repeat(1, 1, 2, 2, 2)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --------------------------------------------------------------------------- Dice / BCE


def test_region_dice_bce_by_hand():
    # logits 0 -> p = 0.5 on 4 voxels, ground truth [1, 1, 0, 0]:
    # sum(p g) = 1, sum(p) = 2, sum(g) = 2 -> Dice = 2 / 4 = 0.5; BCE = ln 2 at every voxel.
    logits = torch.zeros(1, 1, 4)
    regions = torch.tensor([[[1, 1, 0, 0]]], dtype=torch.bool)
    assert region_dice_loss(logits, regions, smooth=0.0).item() == pytest.approx(0.5)
    assert region_bce_loss(logits, regions).item() == pytest.approx(math.log(2.0))
    total = region_dice_bce_loss(logits, regions, smooth=0.0, dice_weight=2.0, bce_weight=3.0)
    assert total.item() == pytest.approx(2 * 0.5 + 3 * math.log(2.0))


def test_dice_perfect_and_both_empty():
    probs = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])
    target = probs.clone()
    # Sample 1 matches exactly (Dice 1); sample 2 is empty on both sides: smooth / smooth = 1.
    assert soft_dice_loss(probs, target).item() == pytest.approx(0.0, abs=1e-6)


def test_batch_dice_versus_per_sample_dice():
    # Sample 1: p = g = [1, 1, 0, 0] -> Dice 1. Sample 2: g empty, p = [1, 0, 0, 0] -> Dice 0 (smooth 0).
    probs = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]])
    target = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])
    # Per sample: 1 - (1 + 0) / 2 = 0.5.
    assert soft_dice_loss(probs, target, smooth=0.0).item() == pytest.approx(0.5)
    # Batch: sum(p g) = 2, sum(p) = 3, sum(g) = 2 -> Dice = 4 / 5 -> loss 0.2.
    assert soft_dice_loss(probs, target, smooth=0.0, batch_dice=True).item() == pytest.approx(0.2)


def test_dice_bce_mask_ignores_voxels():
    logits = torch.tensor([[[5.0, -5.0, 30.0, -30.0]]])
    regions = torch.tensor([[[1.0, 0.0, 0.0, 1.0]]])
    mask = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    kept = region_bce_loss(logits[..., :2], regions[..., :2])
    assert region_bce_loss(logits, regions, mask=mask).item() == pytest.approx(kept.item())
    kept_dice = region_dice_loss(logits[..., :2], regions[..., :2])
    assert region_dice_loss(logits, regions, mask=mask).item() == pytest.approx(kept_dice.item())


def test_label_dice_ce_by_hand():
    # Two classes, logits 0 -> p = 0.5 for each; labels [1, 1, 0, 0].
    # CE = ln 2 per voxel. Foreground Dice: sum(p g) = 1, sum(p) = 2, sum(g) = 2 -> 0.5; background the same.
    logits = torch.zeros(1, 2, 4)
    labels = torch.tensor([[1, 1, 0, 0]])
    expected = 0.5 + math.log(2.0)
    assert label_dice_ce_loss(logits, labels, smooth=0.0).item() == pytest.approx(expected)
    assert label_dice_ce_loss(logits, labels[:, None], smooth=0.0, include_background=True).item() == pytest.approx(
        expected
    )


def test_supervised_losses_reject_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        region_dice_bce_loss(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="labels must lie"):
        label_dice_ce_loss(torch.zeros(1, 2, 4), torch.tensor([[0, 1, 2, 0]]))
    with pytest.raises(TypeError, match="integer"):
        label_dice_ce_loss(torch.zeros(1, 2, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="mask"):
        region_bce_loss(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), mask=torch.ones(1, 2, 4))


def test_bce_is_patch_size_invariant(gen):
    logits = torch.randn(2, 3, 3, 4, 5, generator=gen)
    regions = torch.rand(2, 3, 3, 4, 5, generator=gen) > 0.5
    single = region_bce_loss(logits, regions)
    assert region_bce_loss(tile2(logits), tile2(regions)).item() == pytest.approx(single.item(), rel=1e-6)
    # Dice without smoothing is a ratio of sums, each multiplied by 8 when tiled.
    single_dice = region_dice_loss(logits, regions, smooth=0.0)
    assert region_dice_loss(tile2(logits), tile2(regions), smooth=0.0).item() == pytest.approx(single_dice.item())


# --------------------------------------------------------------------------- KD, sigmoid regions


def test_kd_sigmoid_one_voxel_by_hand_at_t2():
    # Teacher p = 0.8: logit = ln 4, tempered ln 4 / 2 = ln 2 -> q = 2/3. Student z = 0 -> s = 1/2.
    # KL = 2/3 ln((2/3)/(1/2)) + 1/3 ln((1/3)/(1/2)) = 2/3 ln(4/3) + 1/3 ln(2/3); times T² = 4.
    expected = 4.0 * (2.0 / 3.0 * math.log(4.0 / 3.0) + 1.0 / 3.0 * math.log(2.0 / 3.0))
    loss = kd_sigmoid(torch.zeros(1, 1, 1, 1, 1), torch.full((1, 1, 1, 1, 1), 0.8), temperature=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.2265321, rel=1e-6)


def test_kd_sigmoid_zero_for_identical_distributions(gen):
    probs = torch.rand(2, 3, 4, 4, 4, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    student = torch.log(probs) - torch.log1p(-probs)
    for temperature in (1.0, 2.0, 4.0):
        assert kd_sigmoid(student, probs, temperature=temperature).item() == pytest.approx(0.0, abs=1e-12)


def test_kd_sigmoid_handles_cached_zeros_and_ones():
    eps = 1.0 / 510.0
    teacher = torch.tensor([0.0, 1.0, 0.0, 1.0]).reshape(1, 1, 4)
    student = torch.tensor([-30.0, 30.0, 3.0, -3.0]).reshape(1, 1, 4).requires_grad_()
    loss = kd_sigmoid(student, teacher, temperature=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    # A cached 0 is treated as eps, a cached 1 as 1 - eps.
    clamped = torch.tensor([eps, 1 - eps, eps, 1 - eps]).reshape(1, 1, 4)
    assert loss.item() == pytest.approx(kd_sigmoid(student.detach(), clamped, temperature=2.0).item(), rel=1e-6)
    # The student matching logit(eps) exactly is at zero loss.
    at_clamp = torch.full((1, 1, 1), logit(eps), dtype=torch.float64)
    assert kd_sigmoid(at_clamp, torch.zeros(1, 1, 1, dtype=torch.float64), temperature=3.0).item() == pytest.approx(
        0.0, abs=1e-12
    )


def test_kd_sigmoid_t_squared_scaling():
    z, p = 1.5, 0.3
    student = torch.full((1, 1, 1), z, dtype=torch.float64)
    teacher = torch.full((1, 1, 1), p, dtype=torch.float64)
    # Exactly T² times the tempered KL, computed here from its definition.
    for temperature in (1.0, 2.0, 5.0):
        q = 1.0 / (1.0 + math.exp(-logit(p) / temperature))
        s = 1.0 / (1.0 + math.exp(-z / temperature))
        kl = q * math.log(q / s) + (1 - q) * math.log((1 - q) / (1 - s))
        got = kd_sigmoid(student, teacher, temperature=temperature).item()
        assert got == pytest.approx(temperature**2 * kl, rel=1e-9)
    # For large T, T² KL -> (z - logit p)² / 8 (KL ~ Fisher information 1/4 times the squared
    # logit gap (z - logit p)² / T², halved): the T² factor keeps the term's size independent of T.
    limit = (z - logit(p)) ** 2 / 8.0
    assert kd_sigmoid(student, teacher, temperature=200.0).item() == pytest.approx(limit, rel=1e-3)


def test_kd_sigmoid_is_patch_size_invariant(gen):
    student = torch.randn(2, 3, 3, 4, 5, generator=gen)
    teacher = torch.randint(0, 256, (2, 3, 3, 4, 5), generator=gen).float() / 255.0
    weight = torch.rand(2, 1, 3, 4, 5, generator=gen)
    single = kd_sigmoid(student, teacher, temperature=2.0, weight=weight)
    tiled = kd_sigmoid(tile2(student), tile2(teacher), temperature=2.0, weight=tile2(weight))
    assert tiled.item() == pytest.approx(single.item(), rel=1e-5)


def test_kd_sigmoid_has_no_softmax_across_regions(gen):
    student = torch.randn(1, 3, 2, 2, 2, generator=gen, requires_grad=True)
    teacher = torch.rand(1, 3, 2, 2, 2, generator=gen)
    kd_sigmoid(student, teacher, temperature=2.0).backward()
    before = student.grad.clone()
    student.grad = None
    changed = teacher.clone()
    changed[:, 0] = 1.0 - changed[:, 0]  # change the whole-tumour teacher only
    kd_sigmoid(student, changed, temperature=2.0).backward()
    assert torch.equal(student.grad[:, 1:], before[:, 1:])
    assert not torch.allclose(student.grad[:, 0], before[:, 0])


def test_kd_gradients_reach_the_student_only(gen):
    student = torch.randn(1, 3, 2, 2, 2, generator=gen, requires_grad=True)
    teacher = torch.rand(1, 3, 2, 2, 2, generator=gen, requires_grad=True)
    weight = torch.rand(1, 1, 2, 2, 2, generator=gen, requires_grad=True)
    kd_sigmoid(student, teacher, temperature=2.0, weight=weight).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None and weight.grad is None
    soft_student = torch.randn(1, 4, 2, 2, 2, generator=gen, requires_grad=True)
    soft_teacher = torch.softmax(torch.randn(1, 4, 2, 2, 2, generator=gen), dim=1).requires_grad_()
    kd_softmax(soft_student, soft_teacher, temperature=2.0).backward()
    assert soft_student.grad is not None and soft_teacher.grad is None


def test_kd_sigmoid_weight_and_uncertainty():
    # Two voxels; the second has maximal teacher uncertainty (std 0.5) -> weight 0.
    student = torch.tensor([0.0, 4.0]).reshape(1, 1, 2)
    teacher = torch.tensor([0.8, 0.1]).reshape(1, 1, 2)
    uncertainty = torch.tensor([0.0, 0.5]).reshape(1, 1, 2)
    first_only = kd_sigmoid(student[..., :1], teacher[..., :1], temperature=2.0)
    got = kd_sigmoid(student, teacher, temperature=2.0, teacher_uncertainty=uncertainty)
    assert got.item() == pytest.approx(first_only.item(), rel=1e-6)
    # uncertainty_weight is 1 - u / 0.5; combined multiplicatively with a voxel weight.
    assert torch.allclose(uncertainty_weight(torch.tensor([0.0, 0.1, 0.5, 0.7])), torch.tensor([1.0, 0.8, 0.0, 0.0]))
    u = torch.tensor([0.1, 0.2]).reshape(1, 1, 2)
    w = torch.tensor([0.5, 1.0]).reshape(1, 1, 2)
    explicit = kd_sigmoid(student, teacher, temperature=2.0, weight=w * (1 - 2 * u))
    assert kd_sigmoid(student, teacher, temperature=2.0, weight=w, teacher_uncertainty=u).item() == pytest.approx(
        explicit.item(), rel=1e-6
    )
    # An all-zero weight gives 0, not NaN.
    assert kd_sigmoid(student, teacher, weight=torch.zeros(1, 1, 2)).item() == 0.0


def test_kd_sigmoid_rejects_bad_inputs():
    student = torch.zeros(1, 3, 2, 2, 2)
    with pytest.raises(TypeError, match="255"):
        kd_sigmoid(student, torch.zeros(1, 3, 2, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        kd_sigmoid(student, torch.full((1, 3, 2, 2, 2), 1.5))
    with pytest.raises(ValueError, match="shape"):
        kd_sigmoid(student, torch.zeros(1, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="eps"):
        kd_sigmoid(student, torch.zeros(1, 3, 2, 2, 2), eps=0.0)
    with pytest.raises(ValueError, match="temperature"):
        kd_sigmoid(student, torch.zeros(1, 3, 2, 2, 2), temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        kd_sigmoid(student, torch.zeros(1, 3, 2, 2, 2), reduction="sum")
    with pytest.raises(ValueError, match="only used"):
        kd_sigmoid(student, torch.zeros(1, 3, 2, 2, 2), reduction="none", weight=torch.ones(1, 1, 2, 2, 2))
    with pytest.raises(ValueError, match=">= 0"):
        kd_sigmoid(student, torch.zeros(1, 3, 2, 2, 2), weight=-torch.ones(1, 1, 2, 2, 2))


# --------------------------------------------------------------------------- KD, softmax labels


def test_kd_softmax_by_hand():
    teacher = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64).reshape(1, 3, 1)
    student = torch.zeros(1, 3, 1, dtype=torch.float64)  # uniform 1/3
    # T = 1: KL = 0.5 ln(1.5) + 2 * 0.25 ln(0.75).
    t1 = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)
    assert kd_softmax(student, teacher).item() == pytest.approx(t1, rel=1e-9)
    # T = 2: q ∝ sqrt(p) = (1/√2, 1/2, 1/2); KL against uniform is sum q ln(3 q); times 4.
    roots = [math.sqrt(0.5), 0.5, 0.5]
    q = [r / sum(roots) for r in roots]
    t2 = 4.0 * sum(qi * math.log(3 * qi) for qi in q)
    assert kd_softmax(student, teacher, temperature=2.0).item() == pytest.approx(t2, rel=1e-9)
    assert t2 == pytest.approx(0.05688, rel=1e-3)


def test_kd_softmax_zero_when_identical_and_patch_invariant(gen):
    teacher = torch.softmax(torch.randn(2, 4, 3, 4, 5, generator=gen, dtype=torch.float64), dim=1)
    assert kd_softmax(torch.log(teacher), teacher, temperature=3.0).item() == pytest.approx(0.0, abs=1e-12)
    student = torch.randn(2, 4, 3, 4, 5, generator=gen)
    single = kd_softmax(student, teacher.float(), temperature=2.0)
    assert kd_softmax(tile2(student), tile2(teacher.float()), temperature=2.0).item() == pytest.approx(
        single.item(), rel=1e-5
    )


def test_kd_softmax_rejects_per_class_weight_and_single_class():
    with pytest.raises(ValueError, match="weight"):
        kd_softmax(torch.zeros(1, 3, 2, 2, 2), torch.full((1, 3, 2, 2, 2), 1 / 3), weight=torch.ones(1, 3, 2, 2, 2))
    with pytest.raises(ValueError, match="2 classes"):
        kd_softmax(torch.zeros(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2))


# --------------------------------------------------------------------------- boundary


def test_signed_distance_map_by_hand():
    region = np.array([0, 0, 1, 1, 1, 0], dtype=bool)
    # Outside: distance to the nearest region voxel; inside: minus the distance to the nearest outside voxel.
    np.testing.assert_allclose(signed_distance_map(region), [2, 1, -1, -2, -1, 1])
    np.testing.assert_allclose(signed_distance_map(region, spacing=[2.5]), [5, 2.5, -2.5, -5, -2.5, 2.5])
    assert not signed_distance_map(np.zeros(5, bool)).any()
    assert not signed_distance_map(np.ones(5, bool)).any()


def test_signed_distance_maps_respect_anisotropic_spacing():
    regions = np.zeros((1, 1, 5, 5, 5), dtype=bool)
    regions[0, 0, 2, 2, 2] = True
    maps = signed_distance_maps(regions, spacing=(1.0, 2.0, 3.0))
    assert maps.dtype == torch.float32 and maps.shape == regions.shape
    assert maps[0, 0, 0, 2, 2].item() == pytest.approx(2.0)  # two steps of 1 mm
    assert maps[0, 0, 2, 0, 2].item() == pytest.approx(4.0)  # two steps of 2 mm
    assert maps[0, 0, 2, 2, 0].item() == pytest.approx(6.0)  # two steps of 3 mm


def test_boundary_loss_signs():
    regions = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    regions[:, :, 2:6, 2:6, 2:6] = True
    maps = signed_distance_maps(regions)
    inside = torch.where(regions, 20.0, -20.0)  # predicts exactly the ground truth
    outside_near = torch.full((1, 1, 8, 8, 8), -20.0)
    outside_near[:, :, 1, 2:6, 2:6] = 20.0  # a slab one voxel outside the region
    outside_far = torch.full((1, 1, 8, 8, 8), -20.0)
    outside_far[:, :, 7, 2:6, 2:6] = 20.0  # the same slab two voxels further out
    exact, near, far = (boundary_loss(z, maps).item() for z in (inside, outside_near, outside_far))
    assert exact < 0 < near < far
    assert boundary_loss_from_regions(inside, regions).item() == pytest.approx(exact)
    # An empty ground truth contributes nothing whatever is predicted.
    empty = torch.zeros_like(regions)
    assert boundary_loss_from_regions(outside_far, empty).item() == 0.0


def test_boundary_loss_gradient_pushes_the_right_way():
    regions = torch.zeros(1, 1, 6, 6, 6, dtype=torch.bool)
    regions[:, :, 1:4, 1:4, 1:4] = True
    logits = torch.zeros(1, 1, 6, 6, 6, requires_grad=True)
    boundary_loss(logits, signed_distance_maps(regions)).backward()
    # Descending the gradient raises logits inside and lowers them outside.
    assert (logits.grad[regions] < 0).all()
    assert (logits.grad[~regions] > 0).all()


# --------------------------------------------------------------------------- region affinity (Qin et al.)


def test_region_affinity_by_hand():
    # Two regions (left and right halves). Student prototypes are orthogonal (cos 0),
    # teacher prototypes parallel (cos 1): one pair, loss (0 - 1)² = 1.
    masks = torch.zeros(1, 2, 2, 2, 2)
    masks[:, 0, 0] = 1.0
    masks[:, 1, 1] = 1.0
    student = torch.zeros(1, 2, 2, 2, 2)
    student[:, 0, 0] = 1.0
    student[:, 1, 1] = 1.0
    teacher = torch.ones(1, 3, 2, 2, 2)
    loss = region_affinity_loss(student, teacher, masks, add_background=False)
    assert loss.item() == pytest.approx(1.0)


def test_region_affinity_invariances(gen):
    features = torch.randn(2, 4, 4, 4, 4, generator=gen)
    regions = torch.zeros(2, 3, 8, 8, 8, dtype=torch.bool)
    regions[:, 0, 1:7, 1:7, 1:7] = True
    regions[:, 1, 2:6, 2:6, 2:6] = True
    regions[:, 2, 3:5, 3:5, 3:5] = True
    # Zero against itself, a positive multiple, or a copy with the channels repeated (other width).
    assert region_affinity_loss(features, features, regions).item() == pytest.approx(0.0, abs=1e-10)
    assert region_affinity_loss(features, 3.0 * features, regions).item() == pytest.approx(0.0, abs=1e-10)
    widened = torch.cat([features, features], dim=1)
    assert region_affinity_loss(features, widened, regions).item() == pytest.approx(0.0, abs=1e-10)
    other = torch.randn(2, 6, 2, 2, 2, generator=gen)
    assert region_affinity_loss(features, other, regions).item() > 0


def test_region_affinity_ignores_absent_regions(gen):
    regions = torch.zeros(1, 3, 4, 4, 4, dtype=torch.bool)  # no tumour: background only
    student = torch.randn(1, 4, 4, 4, 4, generator=gen, requires_grad=True)
    teacher = torch.randn(1, 5, 4, 4, 4, generator=gen)
    loss = region_affinity_loss(student, teacher, regions)
    assert loss.item() == 0.0
    loss.backward()  # still differentiable


def test_importance_map_loss_properties(gen):
    student = torch.randn(2, 4, 3, 4, 5, generator=gen, requires_grad=True)
    teacher = torch.randn(2, 8, 3, 4, 5, generator=gen, requires_grad=True)
    assert importance_map_loss(student, student.detach()).item() == pytest.approx(0.0, abs=1e-10)
    value = importance_map_loss(student, teacher)
    assert 0 < value.item() <= 4
    assert importance_map_loss(2.0 * student, 0.5 * teacher).item() == pytest.approx(value.item(), rel=1e-5)
    tiled = importance_map_loss(tile2(student), tile2(teacher))
    assert tiled.item() == pytest.approx(value.item(), rel=1e-5)
    value.backward()
    assert student.grad is not None and teacher.grad is None
    # Different grids: the finer map is pooled to the coarser one.
    assert importance_map_loss(student, teacher[:, :, :, :2, :]).item() >= 0


def test_dice_both_empty_without_smoothing_is_one():
    probs = torch.zeros(1, 2, 4)
    assert soft_dice_loss(probs, torch.zeros(1, 2, 4), smooth=0.0).item() == 0.0
