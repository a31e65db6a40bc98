"""CompositeLoss: schedules step by step, per-term logs, lazy evaluation, input errors."""

from __future__ import annotations

import functools

import pytest
import torch

from distill.losses import (
    CompositeLoss,
    GraphFlowLoss,
    LossTerm,
    MissingLossInputError,
    constant,
    kd_sigmoid,
    ramp_in,
    region_dice_bce_loss,
    step_on,
)


def test_schedules_step_by_step():
    assert [constant(0.5)(t) for t in (0, 1, 10**6)] == [0.5, 0.5, 0.5]
    assert [step_on(5)(t) for t in (0, 4, 5, 6)] == [0.0, 0.0, 1.0, 1.0]
    ramp = ramp_in(10, 4)
    assert [ramp(t) for t in (0, 9, 10, 11, 12, 13, 14, 15, 1000)] == [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert [ramp_in(3, 0)(t) for t in (2, 3)] == [0.0, 1.0]
    with pytest.raises(ValueError):
        ramp_in(-1, 4)
    with pytest.raises(ValueError):
        step_on(2.5)


class Counter:
    """A loss that returns a fixed value times its input's mean and counts its calls."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.value * x.mean()


def test_only_active_terms_are_evaluated_and_logged():
    always, late = Counter(2.0), Counter(10.0)
    composite = CompositeLoss(
        [
            LossTerm("sup", always, weight=1.5),
            LossTerm("kd", late, weight=0.5, schedule=ramp_in(2, 2)),
        ]
    )
    x = torch.ones(3, requires_grad=True)
    expected = {
        0: (3.0, 0.0),
        2: (3.0, 0.0),
        3: (3.0, 0.5 * 0.5 * 10.0),
        4: (3.0, 0.5 * 10.0),
    }
    for step, (sup, kd) in expected.items():
        total, logs = composite(step, x=x)
        assert total.item() == pytest.approx(sup + kd)
        assert logs["total"] == pytest.approx(sup + kd)
        assert logs["sup/raw"] == pytest.approx(2.0) and logs["sup/weighted"] == pytest.approx(sup)
        assert logs["kd/weighted"] == pytest.approx(kd)
        assert logs["kd/weight"] == pytest.approx(0.5 * ramp_in(2, 2)(step))
        assert ("kd/raw" in logs) == (kd != 0)
    assert always.calls == 4 and late.calls == 2
    total.backward()
    assert x.grad is not None


def test_missing_input_names_term_and_input():
    composite = CompositeLoss([LossTerm("kd", functools.partial(kd_sigmoid, temperature=2.0))])
    with pytest.raises(MissingLossInputError, match=r"'kd' needs input 'teacher_probs'"):
        composite(0, student_logits=torch.zeros(1, 3, 2, 2, 2))
    # An inactive term's inputs are not needed ...
    late = CompositeLoss(
        [LossTerm("sup", Counter(1.0)), LossTerm("kd", kd_sigmoid, schedule=step_on(5))]
    )
    late(0, x=torch.ones(2))
    # ... and the trainer can ask which inputs a step needs.
    assert late.inputs_needed(0) == {"x"}
    assert late.inputs_needed(5) == {"x", "student_logits", "teacher_probs"}
    assert late.inputs_needed() == {"x", "student_logits", "teacher_probs"}


def test_input_renaming_and_optional_inputs():
    logits = torch.randn(1, 3, 2, 2, 2)
    teacher = torch.rand(1, 3, 2, 2, 2)
    weight = torch.zeros(1, 1, 2, 2, 2)
    weight[..., 0] = 1.0
    term = LossTerm(
        "kd",
        kd_sigmoid,
        inputs={"student_logits": "logits", "teacher_probs": "soft_labels"},
        optional_inputs={"weight": "voxel_weight"},
    )
    composite = CompositeLoss([term])
    unweighted, _ = composite(0, logits=logits, soft_labels=teacher)
    weighted, _ = composite(0, logits=logits, soft_labels=teacher, voxel_weight=weight)
    assert unweighted.item() == pytest.approx(kd_sigmoid(logits, teacher).item())
    assert weighted.item() == pytest.approx(kd_sigmoid(logits, teacher, weight=weight).item())


def test_mapping_terms_log_their_parts_and_modules_are_registered():
    graph = GraphFlowLoss(student_channels=(3, 5), teacher_channels=(4, 4), embed_channels=4, nodes_per_axis=2)
    composite = CompositeLoss(
        [
            LossTerm("seg", region_dice_bce_loss, inputs={"logits": "logits", "regions": "regions"}),
            LossTerm("graph", graph, weight=0.1),
        ]
    )
    assert {id(p) for p in composite.parameters()} == {id(p) for p in graph.parameters()}
    gen = torch.Generator().manual_seed(0)
    tensors = dict(
        logits=torch.randn(1, 3, 4, 4, 4, generator=gen),
        regions=torch.rand(1, 3, 4, 4, 4, generator=gen) > 0.5,
        student_shallow=torch.randn(1, 3, 4, 4, 4, generator=gen),
        student_deep=torch.randn(1, 5, 2, 2, 2, generator=gen),
        teacher_shallow=torch.randn(1, 4, 4, 4, 4, generator=gen),
        teacher_deep=torch.randn(1, 4, 2, 2, 2, generator=gen),
    )
    total, logs = composite(0, **tensors)
    assert logs["graph/raw"] == pytest.approx(logs["graph/vertex"] + logs["graph/edge"], rel=1e-5)
    assert logs["graph/weighted"] == pytest.approx(0.1 * logs["graph/raw"], rel=1e-5)
    assert total.item() == pytest.approx(logs["seg/weighted"] + logs["graph/weighted"], rel=1e-5)


def test_rejected_compositions():
    with pytest.raises(ValueError, match="unique"):
        CompositeLoss([LossTerm("a", Counter(1.0)), LossTerm("a", Counter(2.0))])
    with pytest.raises(ValueError, match="at least one"):
        CompositeLoss([])
    with pytest.raises(ValueError, match="weight"):
        LossTerm("a", Counter(1.0), weight=-1.0)
    with pytest.raises(ValueError, match="'/'"):
        LossTerm("a/b", Counter(1.0))
    bad = CompositeLoss([LossTerm("vec", lambda x: x)])
    with pytest.raises(ValueError, match="scalar"):
        bad(0, x=torch.ones(3))


def test_all_terms_off_gives_constant_zero():
    composite = CompositeLoss([LossTerm("kd", Counter(1.0), schedule=step_on(10))])
    total, logs = composite(0, x=torch.ones(2))
    assert total.item() == 0.0 and logs["total"] == 0.0 and logs["kd/weighted"] == 0.0
