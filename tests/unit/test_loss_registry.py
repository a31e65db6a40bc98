"""Every loss in distill.losses.LOSSES: built by name, run on tiny tensors, finite, with gradients.

Where a value is checked, it is derived by hand in the comment beside it (never recorded
from the code). Tiny cases are 2x2x2 volumes, one sample; ``G`` is the region made of the
first two voxels (flat order) and ``logits 0`` means every probability is 0.5.
"""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses import LOSSES, CompositeLoss, Paraphraser, UnknownLossError, build_loss

SHAPE = (1, 1, 2, 2, 2)
LN2 = math.log(2.0)
KL_HALF_VS_THREE_QUARTERS = 0.5 * math.log(4.0 / 3.0)  # KL(Bern(.5) || Bern(.75)) = .5 ln(.5/.75) + .5 ln(.5/.25)


def grad(t: torch.Tensor) -> torch.Tensor:
    return t.requires_grad_(True)


def region_g() -> torch.Tensor:
    g = torch.zeros(8, dtype=torch.bool)
    g[:2] = True
    return g.reshape(SHAPE)


def logits_zero() -> torch.Tensor:
    return grad(torch.zeros(SHAPE))


def two_class_logits() -> torch.Tensor:
    """Student softmax over 2 classes with logits (ln 3, 0): probabilities (0.75, 0.25) everywhere."""
    logits = torch.zeros(1, 2, 2, 2, 2)
    logits[:, 0] = math.log(3.0)
    return grad(logits)


def halves(channels: int = 1) -> torch.Tensor:
    return torch.full((1, channels, 2, 2, 2), 0.5)


def boundary_case() -> dict:
    region = torch.zeros(SHAPE, dtype=torch.bool)
    region[0, 0, 0, 0, 0] = True
    return {"student_logits": logits_zero(), "regions": region}


def region_affinity_case() -> dict:
    # Student: region voxels (1, 0), background (0, 1): prototypes orthogonal, cos = 0.
    # Teacher: (1, 0) everywhere: cos = 1. One present pair (background, region): (0 - 1)^2 = 1.
    region = region_g()
    student = torch.zeros(1, 2, 2, 2, 2)
    student[:, 0][region[:, 0]] = 1.0
    student[:, 1][~region[:, 0]] = 1.0
    teacher = torch.zeros(1, 2, 2, 2, 2)
    teacher[:, 0] = 1.0
    return {"student_features": grad(student), "teacher_features": teacher, "region_masks": region}


def importance_map_case() -> dict:
    # Student map uniform: 1/sqrt(8) at each of 8 voxels after L2 normalisation; teacher map
    # non-zero at one voxel only: 1 there. Sum of squares: 7/8 + (1/sqrt(8) - 1)^2 = 2 - 2/sqrt(8).
    teacher = torch.zeros(1, 2, 2, 2, 2)
    teacher[0, :, 0, 0, 0] = 3.0
    return {"student_features": grad(torch.ones(1, 2, 2, 2, 2)), "teacher_features": teacher}


def graph_flow_case() -> dict:
    gen = torch.Generator().manual_seed(0)
    return {
        "student_shallow": grad(torch.randn(1, 3, 4, 4, 4, generator=gen)),
        "student_deep": grad(torch.randn(1, 5, 2, 2, 2, generator=gen)),
        "teacher_shallow": torch.randn(1, 4, 4, 4, 4, generator=gen),
        "teacher_deep": torch.randn(1, 4, 2, 2, 2, generator=gen),
    }


# name -> (options, tensors, hand-computed value or None)
CASES = {
    # BCE of logit 0 is ln 2 whatever the target.
    "region_bce": ({}, lambda: {"logits": logits_zero(), "regions": region_g()}, LN2),
    # sum(p g) = 0.5 * 2 = 1, sum(p) = 4, sum(g) = 2: Dice = 2 / 6, loss 2/3.
    "region_dice": ({"smooth": 0.0}, lambda: {"logits": logits_zero(), "regions": region_g()}, 2 / 3),
    "region_dice_bce": ({"smooth": 0.0}, lambda: {"logits": logits_zero(), "regions": region_g()}, 2 / 3 + LN2),
    "soft_dice": ({"smooth": 0.0}, lambda: {"probs": grad(halves()), "target": region_g()}, 2 / 3),
    # CE of two equal logits is ln 2; the Dice of class 1 (background left out) is the 2/3 above.
    "label_dice_ce": (
        {"smooth": 0.0},
        lambda: {"logits": grad(torch.zeros(1, 2, 2, 2, 2)), "labels": region_g()[:, 0].long()},
        LN2 + 2 / 3,
    ),
    # One voxel region at a corner: phi = -1 inside, +1 at its 3 face neighbours, +sqrt 2 at the
    # 3 edge neighbours, +sqrt 3 at the opposite corner; times sigmoid(0) = 0.5, mean over 8.
    "boundary": ({}, boundary_case, 0.5 * (-1 + 3 + 3 * math.sqrt(2) + math.sqrt(3)) / 8),
    # phi = 2 everywhere times 0.5.
    "boundary_maps": ({}, lambda: {"student_logits": logits_zero(), "distance_maps": torch.full(SHAPE, 2.0)}, 1.0),
    # Student sigmoid(ln 3) = 0.75 against teacher 0.5, T = 1.
    "kd_sigmoid": (
        {"temperature": 1.0},
        lambda: {"student_logits": grad(torch.full(SHAPE, math.log(3.0))), "teacher_probs": halves()},
        KL_HALF_VS_THREE_QUARTERS,
    ),
    # Student softmax (0.75, 0.25) against teacher (0.5, 0.5): the same KL.
    "kd_softmax": (
        {"temperature": 1.0},
        lambda: {"student_logits": two_class_logits(), "teacher_probs": halves(2)},
        KL_HALF_VS_THREE_QUARTERS,
    ),
    # Teachers 0.5 and 0.75 against student 0.75: KLs (.5 ln 4/3, 0), mean .25 ln 4/3.
    "kd_sigmoid_teachers": (
        {"temperature": 1.0},
        lambda: {"student_logits": grad(torch.full(SHAPE, math.log(3.0))),
                 "teachers": [halves(), torch.full(SHAPE, 0.75)], "uncertainties": [None, None]},  # fmt: skip
        KL_HALF_VS_THREE_QUARTERS / 2,
    ),
    "kd_softmax_teachers": (
        {"temperature": 1.0},
        lambda: {"student_logits": two_class_logits(),
                 "teachers": [halves(2),
                              torch.cat([torch.full(SHAPE, 0.75), torch.full(SHAPE, 0.25)], 1)]},  # fmt: skip
        KL_HALF_VS_THREE_QUARTERS / 2,
    ),
    # Teacher 0.75 everywhere, label G: the 6 voxels outside G contradict (0.75 >= 0.5, label 0) and
    # are swapped to 0.25; against student 0.75: KL(.25 || .75) = .25 ln(1/3) + .75 ln 3 = .5 ln 3 on
    # 6 of 8 voxels, 0 on G: mean .375 ln 3.
    "kd_sigmoid_corrected": (
        {"correction": "adjust", "temperature": 1.0},
        lambda: {"student_logits": grad(torch.full(SHAPE, math.log(3.0))), "teacher_probs": torch.full(SHAPE, 0.75),
                 "regions": region_g()},  # fmt: skip
        0.375 * math.log(3.0),
    ),
    # Teacher 0.25 everywhere vs student 0.75: KL .5 ln 3 on every voxel, so both the inside (G)
    # and the outside mean are .5 ln 3, and so is their average.
    "kd_sigmoid_region_balanced": (
        {"temperature": 1.0},
        lambda: {"student_logits": grad(torch.full(SHAPE, math.log(3.0))), "teacher_probs": torch.full(SHAPE, 0.25),
                 "regions": region_g()},  # fmt: skip
        0.5 * math.log(3.0),
    ),
    # Student 0.5 vs teacher map G: sum(s q) = 1, sum(s) = 4, sum(q) = 2: Dice 2/6, loss 2/3.
    "kd_soft_dice": (
        {"smooth": 0.0},
        lambda: {"student_logits": logits_zero(), "teacher_probs": region_g().float()},
        2 / 3,
    ),
    "region_affinity": ({}, region_affinity_case, 1.0),
    "importance_map": ({}, importance_map_case, 2 - 2 / math.sqrt(8)),
    "graph_flow": (
        {"student_channels": (3, 5), "teacher_channels": (4, 4), "embed_channels": 4, "nodes_per_axis": 2},
        graph_flow_case,
        None,
    ),
    # Head logit ln 3 -> u_hat = 0.75; cached spread 0.25 -> target u = 0.25 / 0.5 = 0.5:
    # -(0.5 ln 0.75 + 0.5 ln 0.25) = 0.5 ln(16/3) at every voxel and region, so also the mean.
    "uncertainty_regression": (
        {},
        lambda: {"uncertainty_logits": grad(torch.full((1, 3, 2, 2, 2), math.log(3.0))),
                 "teacher_uncertainty": torch.full((1, 3, 2, 2, 2), 0.25)},  # fmt: skip
        0.5 * math.log(16.0 / 3.0),
    ),
    "paraphraser_reconstruction": (
        {"paraphraser": Paraphraser(4, 2, kernel_size=1)},
        lambda: {"features": grad(torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(1)))},
        None,
    ),
}


def test_every_registered_loss_has_a_case_here():
    assert set(CASES) == set(LOSSES)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_registered_loss_runs_with_finite_value_and_gradient(name):
    options, make_tensors, expected = CASES[name]
    term = build_loss(name, **options)
    assert term.name == name
    tensors = make_tensors()
    total, logs = CompositeLoss([term])(0, **tensors)
    assert total.dim() == 0 and torch.isfinite(total)
    if expected is not None:
        assert total.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    total.backward()
    leaves = [t for t in tensors.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    assert leaves and all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)
    assert any(t.grad.abs().sum() > 0 for t in leaves)


def test_options_are_bound_and_named_terms_keep_their_settings():
    term = build_loss(
        "kd_sigmoid", term_name="kd", weight=0.7, temperature=2.0, inputs=["student_logits", "teacher_probs"]
    )
    assert (term.name, term.weight, term.fn.keywords) == ("kd", 0.7, {"temperature": 2.0})


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownLossError) as error:
        build_loss("focal")
    assert "'focal'" in str(error.value) and all(name in str(error.value) for name in LOSSES)


def test_an_option_the_loss_does_not_take_is_refused_when_built():
    with pytest.raises(UnknownLossError, match="region_bce"):
        build_loss("region_bce", temperature=2.0)
    with pytest.raises(UnknownLossError, match="graph_flow"):
        build_loss("graph_flow", student_channels=(3, 5), teacher_channels=(4, 4), embed_channels=4, colour="red")
