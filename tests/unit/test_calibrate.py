"""Per-region threshold calibration: the search on arrays small enough to score by hand."""

from __future__ import annotations

import numpy as np
import pytest

from distill.eval.dice import dice
from distill.train.calibrate import THRESHOLD_GRID, calibrate_thresholds, dice_at_thresholds

# Two validation cases, regions WT, TC, ET in channel order; a voxel is in the region where p > t.
CASE_A = (
    np.array([[0.9, 0.7, 0.45, 0.3, 0.1, 0.05],  # WT
              [0.42, 0.6, 0.2, 0.1, 0.05, 0.05],  # TC
              [0.498, 0.3, 0.05, 0.05, 0.05, 0.05]], np.float32),  # ET: the largest probability is 0.498
    np.array([[1, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], bool),
)  # fmt: skip
CASE_B = (
    np.array([[0.01] * 4, [0.9, 0.3, 0.01, 0.01], [0.01] * 4], np.float32),
    np.array([[0] * 4, [1, 0, 0, 0], [0] * 4], bool),
)


def test_the_grid_runs_from_005_to_095_and_holds_one_half():
    assert (THRESHOLD_GRID[0], THRESHOLD_GRID[-1], len(THRESHOLD_GRID)) == (0.05, 0.95, 19)
    assert 0.5 in THRESHOLD_GRID


def test_dice_at_thresholds_by_hand():
    p, g = CASE_A[0][0], CASE_A[1][0]
    # t = 0.5: {0.9, 0.7}: 2 of 3 found, Dice 2*2/(2+3) = 0.8; t = 0.4: {0.9, 0.7, 0.45}: 1;
    # t = 0.25: {.., 0.3}: 2*3/(4+3) = 6/7; t = 0.95: nothing predicted: 0
    assert dice_at_thresholds(p, g, [0.5, 0.4, 0.25, 0.95]).tolist() == pytest.approx([0.8, 1.0, 6 / 7, 0.0])
    # both empty: 1 at every threshold (the BraTS convention)
    assert dice_at_thresholds(CASE_B[0][0], CASE_B[1][0], [0.05, 0.5]).tolist() == [1.0, 1.0]


def test_dice_at_thresholds_agrees_with_the_metric():
    rng = np.random.default_rng(0)
    p, g = rng.random((6, 5, 4)).astype(np.float32), rng.random((6, 5, 4)) < 0.3
    expected = [dice(p > np.float32(t), g) for t in THRESHOLD_GRID]
    assert dice_at_thresholds(p, g, THRESHOLD_GRID).tolist() == pytest.approx(expected, abs=1e-12)


def test_calibration_picks_the_best_mean_dice_per_region_by_hand():
    result = calibrate_thresholds([CASE_A[0], CASE_B[0]], [CASE_A[1], CASE_B[1]], ["a", "b"])
    # WT: case B is empty and unpredicted (Dice 1) at every threshold. Case A: 0.8 at 0.45 and 0.5,
    # 1 at 0.30, 0.35, 0.40 (p > t keeps 0.45 out of the background 0.3), 6/7 at 0.25.
    # Mean: 0.9 at 0.5, 1 at 0.30-0.40; the tie goes to the one nearest 0.5: 0.40.
    # TC: case A {0.6} is right (Dice 1) for 0.45 <= t < 0.6 and 2/3 at 0.40 ({0.42, 0.6});
    # case B {0.9} is right for 0.30 <= t < 0.9. Mean 1 at 0.45, 0.5, 0.55: the tie stays at 0.5.
    # ET: case A's 0.498 is below 0.5: Dice 0, so the mean is (0 + 1) / 2 = 0.5 at 0.5; for
    # 0.30 <= t < 0.498 only 0.498 is above t: Dice 1, mean 1; nearest 0.5: 0.45.
    assert result.thresholds == {"WT": 0.4, "TC": 0.5, "ET": 0.45}
    assert result.dice_default == pytest.approx({"WT": 0.9, "TC": 1.0, "ET": 0.5})
    assert result.dice_calibrated == pytest.approx({"WT": 1.0, "TC": 1.0, "ET": 1.0})
    assert result.cases == ("a", "b") and result.default_threshold == 0.5 and result.grid == THRESHOLD_GRID


def test_calibration_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="one probability map"):
        calibrate_thresholds([CASE_A[0]], [], ["a"])
    with pytest.raises(ValueError, match="strictly between"):
        calibrate_thresholds([CASE_A[0]], [CASE_A[1]], ["a"], grid=(0.0, 0.5))
