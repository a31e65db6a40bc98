"""Weighted ensembles and per-region weight fitting, on hand-made arrays with hand-computed answers."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from distill.data.case import Case
from distill.errors import DistillError
from distill.teacher.base import SoftPrediction, TeacherInfo
from distill.teacher.ensemble import (
    TeacherWeightsConfig,
    WeightedEnsemble,
    fit_region_weights,
    fit_teacher_weights,
    load_weights,
    member_label,
    save_weights,
    simplex_grid,
)

REGIONS = ("WT", "TC", "ET")


class FixedTeacher:
    """A teacher that returns fixed maps (or maps computed from the case)."""

    def __init__(self, name, probabilities, uncertainty=None, channels=REGIONS, kind="sigmoid", n_passes=1, params=10):
        self.probabilities = probabilities
        self.uncertainty = uncertainty
        self.n_passes = n_passes
        self.calls = 0
        self._info = TeacherInfo(
            name=name, output_kind=kind, channels=tuple(channels), parameters_per_member=params,
            members=(name,), tta="none", identity={"name": name},
        )  # fmt: skip

    @property
    def info(self) -> TeacherInfo:
        return self._info

    def predict(self, case: Case, members: Sequence[str] | None = None) -> SoftPrediction:
        self.calls += 1
        p = self.probabilities(case) if callable(self.probabilities) else self.probabilities
        u = np.zeros_like(p) if self.uncertainty is None else self.uncertainty
        return SoftPrediction(np.asarray(p, np.float32), np.asarray(u, np.float32), self.n_passes)


def one_voxel(values):
    """(K,) values -> (K, 1, 1, 1) array."""
    return np.asarray(values, dtype=np.float64).reshape(-1, 1, 1, 1)


def dummy_case(shape=(1, 1, 1), labels=None):
    return Case(case_id="c0", images=np.ones((4, *shape), np.float32), affine=np.eye(4), labels=labels)


# --------------------------------------------------------------------------- ensemble prediction


def test_total_variance_uncertainty_by_hand():
    # A: mean 0.2, std 0.1; B: mean 0.6, std 0.3 (one voxel, all three channels alike).
    a = FixedTeacher("a", one_voxel([0.2] * 3), one_voxel([0.1] * 3), n_passes=8)
    b = FixedTeacher("b", one_voxel([0.6] * 3), one_voxel([0.3] * 3), n_passes=5)
    # Weights per channel: (0.5, 0.5), (0.25, 0.75), (1, 0).
    weights = np.array([[0.5, 0.25, 1.0], [0.5, 0.75, 0.0]])
    prediction = WeightedEnsemble([a, b], weights).predict(dummy_case())
    # Channel 0: mean 0.4; within 0.5*0.01 + 0.5*0.09 = 0.05; between 0.5*0.04 + 0.5*0.04 = 0.04 -> sqrt(0.09) = 0.3
    # Channel 1: mean 0.05 + 0.45 = 0.5; within 0.0025 + 0.0675 = 0.07;
    #            between 0.25*0.09 + 0.75*0.01 = 0.03 -> sqrt(0.1)
    # Channel 2: member A alone: mean 0.2, std 0.1
    np.testing.assert_allclose(prediction.probabilities.ravel(), [0.4, 0.5, 0.2], atol=1e-6)
    np.testing.assert_allclose(prediction.uncertainty.ravel(), [0.3, np.sqrt(0.1), 0.1], atol=1e-6)
    assert prediction.n_passes == 13


def test_member_with_zero_weight_everywhere_is_not_run():
    a = FixedTeacher("a", one_voxel([0.2] * 3))
    b = FixedTeacher("b", one_voxel([0.6] * 3))
    prediction = WeightedEnsemble([a, b], np.array([[1.0] * 3, [0.0] * 3])).predict(dummy_case())
    assert b.calls == 0 and a.calls == 1
    np.testing.assert_allclose(prediction.probabilities.ravel(), [0.2] * 3, atol=1e-7)
    np.testing.assert_array_equal(prediction.uncertainty, 0.0)


def test_uniform_default_and_info():
    a = FixedTeacher("a", one_voxel([0.2] * 3), params=100)
    b = FixedTeacher("b", one_voxel([0.6] * 3), params=300)
    ensemble = WeightedEnsemble([a, b])
    np.testing.assert_allclose(ensemble.weights, 0.5)
    info = ensemble.info
    assert info.name == "ensemble(a, b)"
    assert info.parameters_per_member == 300
    assert info.members == (member_label(a.info), member_label(b.info))
    assert info.identity["members"] == [a.info.identity_hash, b.info.identity_hash]
    reweighted = WeightedEnsemble([a, b], np.array([[0.6] * 3, [0.4] * 3]))
    assert reweighted.info.identity_hash != info.identity_hash


def test_selecting_members_renormalises_weights():
    a = FixedTeacher("a", one_voxel([0.2] * 3))
    b = FixedTeacher("b", one_voxel([0.6] * 3))
    ensemble = WeightedEnsemble([a, b], np.array([[0.25] * 3, [0.75] * 3]))
    only_a = ensemble.predict(dummy_case(), members=[member_label(a.info)])
    np.testing.assert_allclose(only_a.probabilities.ravel(), [0.2] * 3, atol=1e-7)
    assert b.calls == 0
    with pytest.raises(DistillError, match="none of the requested members"):
        ensemble.predict(dummy_case(), members=["fold_9"])


def test_mismatched_channels_refused_naming_both_members():
    a = FixedTeacher("monai:SegResNet", one_voxel([0.2] * 3), channels=("WT", "TC", "ET"))
    b = FixedTeacher("nnunet:Dataset137", one_voxel([0.2] * 3), channels=("TC", "WT", "ET"))
    with pytest.raises(DistillError, match=r"monai:SegResNet.*nnunet:Dataset137.*channels"):
        WeightedEnsemble([a, b])


def test_mismatched_output_kind_refused():
    a = FixedTeacher("a", one_voxel([0.2] * 3))
    b = FixedTeacher("b", one_voxel([0.2] * 3), kind="softmax")
    with pytest.raises(DistillError, match="output kind"):
        WeightedEnsemble([a, b])


@pytest.mark.parametrize(
    "weights, problem",
    [
        (np.array([[0.5] * 3, [0.6] * 3]), "sum to 1"),
        (np.array([[1.5] * 3, [-0.5] * 3]), "non-negative"),
        (np.array([[0.5] * 2, [0.5] * 2]), "shape"),
    ],
)
def test_bad_weights_refused(weights, problem):
    a = FixedTeacher("a", one_voxel([0.2] * 3))
    b = FixedTeacher("b", one_voxel([0.6] * 3))
    with pytest.raises(DistillError, match=problem):
        WeightedEnsemble([a, b], weights)


# --------------------------------------------------------------------------- weight fitting


def specialists_case():
    """Ground truth on 8 voxels; A is right on WT, B on ET, both right on TC.

    Voxel layout along x: 0-3 truth (all channels), 4-7 background.
    WT: A says 0.8 on truth / 0.05 off; B says 0.1 on truth / 0.9 off.
        Uniform: 0.45 on truth, 0.475 off -> nothing above 0.5 -> Dice 0.
        Weight a for A: truth 0.1 + 0.7a > 0.5 <=> a > 4/7; off 0.9 - 0.85a <= 0.5 <=> a >= 0.47.
        So a in {0.6, ..., 1.0} gives Dice 1; the closest to uniform is 0.6.
    ET: mirror image, so B gets 0.6.
    TC: both 0.9 on truth, 0.1 off: every weighting gives Dice 1 -> uniform kept.
    """
    truth = np.zeros((3, 8, 1, 1), dtype=bool)
    truth[:, :4] = True
    a = np.zeros((3, 8, 1, 1))
    b = np.zeros((3, 8, 1, 1))
    a[0, :4], a[0, 4:], b[0, :4], b[0, 4:] = 0.8, 0.05, 0.1, 0.9  # WT: A right
    a[1, :4], a[1, 4:], b[1, :4], b[1, 4:] = 0.9, 0.1, 0.9, 0.1  # TC: both right
    a[2, :4], a[2, 4:], b[2, :4], b[2, 4:] = 0.1, 0.9, 0.8, 0.05  # ET: B right
    return a, b, truth


def test_fit_picks_the_specialist_per_region_and_beats_uniform():
    a, b, truth = specialists_case()
    fit = fit_region_weights([[a, b]], [truth], step=0.1)
    np.testing.assert_allclose(fit.weights, [[0.6, 0.5, 0.4], [0.4, 0.5, 0.6]], atol=1e-12)
    np.testing.assert_allclose(fit.dice_fitted, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(fit.dice_uniform, [0.0, 1.0, 0.0])
    np.testing.assert_allclose(fit.weights.sum(axis=0), 1.0)
    assert fit.n_cases == 1 and fit.search == "exhaustive"


def test_ties_keep_exact_uniform_weights():
    # Three identical members: nothing helps, so the fit must stay at 1/3 (which is not on the 0.1 grid).
    a, _, truth = specialists_case()
    fit = fit_region_weights([[a, a, a], [a, a, a]], [truth, truth], step=0.1)
    np.testing.assert_allclose(fit.weights, 1.0 / 3.0)
    np.testing.assert_array_equal(fit.dice_fitted, fit.dice_uniform)


def test_coordinate_ascent_beyond_four_members():
    a, b, truth = specialists_case()
    fit = fit_region_weights([[a, b, b, b, b]], [truth], step=0.1)
    assert fit.search == "coordinate_ascent"
    np.testing.assert_allclose(fit.weights.sum(axis=0), 1.0)
    # WT: uniform is 0.8*0.2 + 0.1*0.8 = 0.24 on truth -> Dice 0; A must gain weight until Dice 1.
    assert fit.dice_uniform[0] == 0.0 and fit.dice_fitted[0] == 1.0
    assert fit.weights[0, 0] > 0.5
    # ET: the four copies of B are right, uniform already gives Dice 1 -> unchanged.
    np.testing.assert_allclose(fit.weights[:, 2], 0.2)


def test_empty_ground_truth_and_empty_prediction_count_as_dice_one():
    truth = np.zeros((1, 4, 1, 1), dtype=bool)
    low = np.full((1, 4, 1, 1), 0.1)
    fit = fit_region_weights([[low, low]], [truth])
    np.testing.assert_array_equal(fit.dice_uniform, [1.0])


def test_simplex_grid_counts_and_sums():
    grid = simplex_grid(3, 10)
    assert grid.shape == (66, 3)  # C(12, 2)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert len({tuple(row) for row in grid}) == 66


@pytest.mark.parametrize("step", [0.0, 0.3, 1.5])
def test_bad_step_refused(step):
    a, b, truth = specialists_case()
    with pytest.raises(ValueError, match="step"):
        fit_region_weights([[a, b]], [truth], step=step)


# --------------------------------------------------------------------------- weights files


def test_json_round_trip_and_member_reordering(tmp_path):
    a, b, truth = specialists_case()
    fit = fit_region_weights([[a, b]], [truth])
    path = save_weights(tmp_path / "weights.json", fit, ["A", "B"])
    loaded = load_weights(path, ["A", "B"], channels=REGIONS)
    np.testing.assert_allclose(loaded.weights, fit.weights)
    np.testing.assert_allclose(loaded.dice_fitted, fit.dice_fitted)
    np.testing.assert_allclose(loaded.dice_uniform, fit.dice_uniform)
    assert (loaded.step, loaded.n_cases, loaded.search) == (fit.step, fit.n_cases, fit.search)
    swapped = load_weights(path, ["B", "A"])
    np.testing.assert_allclose(swapped.weights, fit.weights[::-1])
    assert json.loads(path.read_text())["weights"]["A"]["WT"] == pytest.approx(0.6)


def test_json_with_other_members_refused(tmp_path):
    a, b, truth = specialists_case()
    path = save_weights(tmp_path / "weights.json", fit_region_weights([[a, b]], [truth]), ["A", "B"])
    with pytest.raises(DistillError, match=r"weights\.json.*fitted for members \['A', 'B'\]"):
        load_weights(path, ["A", "C"])
    with pytest.raises(DistillError, match=r"weights\.json.*channels"):
        load_weights(path, ["A", "B"], channels=("TC", "WT", "ET"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DistillError, match=r"broken\.json"):
        load_weights(tmp_path / "broken.json", ["A", "B"])


# --------------------------------------------------------------------------- library entry point


def test_fit_teacher_weights_end_to_end(tmp_path):
    a_maps, b_maps, _ = specialists_case()
    labels = np.zeros((8, 1, 1), dtype=np.uint8)
    labels[:4] = 4  # BraTS 2017 ET: inside WT, TC and ET, as the hand-made truth
    case = dummy_case((8, 1, 1), labels)
    a = FixedTeacher("a", a_maps)
    b = FixedTeacher("b", b_maps)
    output = tmp_path / "w.json"
    config = TeacherWeightsConfig(members=[a, b], cases=[case], output=output, label_convention="brats2017")
    result = fit_teacher_weights(config)
    assert (a.calls, b.calls) == (1, 1)
    assert result.dice["WT"] == {"fitted": 1.0, "uniform": 0.0}
    assert result.dice["TC"] == {"fitted": 1.0, "uniform": 1.0}
    ensemble = WeightedEnsemble.from_weights_file([a, b], result.path)
    np.testing.assert_allclose(ensemble.weights, [[0.6, 0.5, 0.4], [0.4, 0.5, 0.6]])
    with pytest.raises(DistillError, match="fitted for members"):
        WeightedEnsemble.from_weights_file([a, FixedTeacher("c", b_maps)], result.path)


def test_fit_teacher_weights_refuses_cases_without_labels(tmp_path):
    a = FixedTeacher("a", one_voxel([0.2] * 3))
    with pytest.raises(DistillError, match="c0"):
        fit_teacher_weights(TeacherWeightsConfig(members=[a], cases=[dummy_case()], output=tmp_path / "w.json"))


def test_fit_teacher_weights_refuses_non_region_members(tmp_path):
    a = FixedTeacher("a", one_voxel([0.2] * 3), channels=("TC", "WT", "ET"))
    case = dummy_case(labels=np.zeros((1, 1, 1), np.uint8))
    with pytest.raises(DistillError, match="sigmoid members with channels"):
        fit_teacher_weights(TeacherWeightsConfig(members=[a], cases=[case], output=tmp_path / "w.json"))
