"""Metrics on tiny hand-made masks; every expected value is worked out by hand below."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distill.eval.confusion import confusion_counts, sensitivity, specificity
from distill.eval.dice import dice
from distill.eval.hausdorff import directed_surface_distances, hd95, surface_voxels
from distill.eval.policy import BRATS_MAX_HD95_MM, EMPTY_MASK_POLICY, EmptyCell, empty_cell, policy_value
from distill.eval.region_metrics import case_region_metrics
from distill.eval.volume import volume_ml, voxel_volume_ml

SPACING = (1.2, 0.9, 2.5)  # voxel volume 2.7 mm^3


def _mask(shape: tuple[int, ...], voxels: list[tuple[int, ...]]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for v in voxels:
        out[v] = True
    return out


# A 2x3x4 volume (24 voxels): pred has 3 voxels, gt 4, two of them shared.
# TP = 2, FP = 1, FN = 2, TN = 24 - 5 = 19.
PRED = _mask((2, 3, 4), [(0, 0, 0), (0, 0, 1), (1, 2, 3)])
GT = _mask((2, 3, 4), [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 1, 1)])


def test_confusion_counts_by_hand():
    c = confusion_counts(PRED, GT)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 2, 19)


def test_dice_by_hand():
    # 2 * 2 / (3 + 4)
    assert dice(PRED, GT) == pytest.approx(4 / 7, abs=1e-15)
    assert dice(GT, PRED) == pytest.approx(4 / 7, abs=1e-15)


def test_sensitivity_and_specificity_by_hand():
    assert sensitivity(PRED, GT) == pytest.approx(2 / 4)
    assert specificity(PRED, GT) == pytest.approx(19 / 20)


def test_integer_masks_read_as_non_zero_foreground():
    assert dice(PRED.astype(np.uint8) * 3, GT.astype(np.int16)) == pytest.approx(4 / 7)


def test_volume_by_hand():
    # 4 voxels x (1.2 x 0.9 x 2.5 = 2.7 mm^3) = 10.8 mm^3 = 0.0108 ml
    assert volume_ml(GT, SPACING) == pytest.approx(0.0108, rel=1e-12)
    assert voxel_volume_ml(SPACING) == pytest.approx(0.0027, rel=1e-12)
    assert volume_ml(np.zeros((2, 2, 2)), SPACING) == 0.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="shape"):
        hd95(np.ones((2, 2, 2)), np.ones((2, 2, 3)), SPACING)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, -1.0, 1.0), (0.0, 1.0, 1.0), (1.0, float("nan"), 1.0)])
def test_bad_spacing_is_refused(spacing):
    with pytest.raises(ValueError, match="spacing"):
        hd95(PRED, GT, spacing)


# ---------------------------------------------------------------- empty-mask policy, cell by cell

EMPTY = np.zeros((3, 3, 3), dtype=bool)
ONE_VOXEL = _mask((3, 3, 3), [(1, 1, 1)])

# (gt, pred) for the three empty cells; the fourth cell is the hand case above.
CELLS = {
    "both_empty": (EMPTY, EMPTY),
    "gt_empty": (EMPTY, ONE_VOXEL),
    "pred_empty": (ONE_VOXEL, EMPTY),
}
# Declared here independently of the policy module. "gt_empty" specificity is the formula:
# TN = 26, FP = 1 in a 27-voxel volume -> 26/27.
EXPECTED = {
    ("dice", "both_empty"): 1.0,
    ("dice", "gt_empty"): 0.0,
    ("dice", "pred_empty"): 0.0,
    ("hd95", "both_empty"): 0.0,
    ("hd95", "gt_empty"): 373.13,
    ("hd95", "pred_empty"): 373.13,
    ("sensitivity", "both_empty"): 1.0,
    ("sensitivity", "gt_empty"): 1.0,
    ("sensitivity", "pred_empty"): 0.0,
    ("specificity", "both_empty"): 1.0,
    ("specificity", "gt_empty"): 26 / 27,
    ("specificity", "pred_empty"): 1.0,
}
METRIC_FUNCTIONS = {
    "dice": lambda p, g: dice(p, g),
    "hd95": lambda p, g: hd95(p, g, SPACING),
    "sensitivity": lambda p, g: sensitivity(p, g),
    "specificity": lambda p, g: specificity(p, g),
}


@pytest.mark.parametrize(("metric", "cell"), sorted(EXPECTED))
def test_empty_mask_policy_cell(metric, cell):
    gt, pred = CELLS[cell]
    assert METRIC_FUNCTIONS[metric](pred, gt) == pytest.approx(EXPECTED[(metric, cell)], abs=1e-12)


def test_policy_table_declares_every_cell_of_every_metric():
    assert set(EMPTY_MASK_POLICY) == {"dice", "hd95", "sensitivity", "specificity"}
    for cells in EMPTY_MASK_POLICY.values():
        assert set(cells) == set(EmptyCell)


def test_policy_lookup():
    assert empty_cell(gt_empty=True, pred_empty=False) is EmptyCell.GT_EMPTY
    assert empty_cell(gt_empty=False, pred_empty=True) is EmptyCell.PRED_EMPTY
    assert policy_value("hd95", gt_empty=False, pred_empty=False) is None
    assert policy_value("specificity", gt_empty=True, pred_empty=False) is None
    with pytest.raises(KeyError, match="no empty-mask policy"):
        policy_value("iou", gt_empty=True, pred_empty=True)


def test_max_hd95_is_the_brats_image_diagonal():
    assert BRATS_MAX_HD95_MM == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=0.005)


def test_specificity_without_background_is_one():
    full = np.ones((2, 2, 2), dtype=bool)
    assert specificity(full, full) == 1.0


# ---------------------------------------------------------------- HD95


def test_hd95_two_single_voxels_anisotropic():
    # Steps of (2, 2, 4) voxels at spacing (1.5, 2.0, 3.0) mm are (3, 4, 12) mm: 13 mm apart.
    spacing = (1.5, 2.0, 3.0)
    pred = _mask((3, 3, 5), [(0, 0, 0)])
    gt = _mask((3, 3, 5), [(2, 2, 4)])
    assert hd95(pred, gt, spacing) == pytest.approx(13.0, abs=1e-12)
    assert hd95(gt, pred, spacing) == pytest.approx(13.0, abs=1e-12)


def test_hd95_percentile_interpolates_between_order_statistics():
    # gt: a line of 10 voxels along axis 0; pred: the same line plus one voxel 4 steps along
    # axis 2 (4 x 2.5 mm = 10 mm from the line's first voxel, its nearest).
    # pred -> gt: ten 0s and one 10; the 95th percentile sits at rank 0.95 * 10 = 9.5,
    # halfway between 0 and 10 -> 5 mm. gt -> pred: all 0. HD95 = 5 mm, HD100 = 10 mm.
    spacing = (1.0, 1.0, 2.5)
    gt = _mask((10, 1, 5), [(i, 0, 0) for i in range(10)])
    pred = gt.copy()
    pred[0, 0, 4] = True
    assert hd95(pred, gt, spacing) == pytest.approx(5.0, abs=1e-12)
    assert hd95(pred, gt, spacing, percentile=100) == pytest.approx(10.0, abs=1e-12)
    assert hd95(pred, gt, (1.0, 1.0, 1.0)) == pytest.approx(2.0, abs=1e-12)


def test_surface_distances_target_the_surface_not_the_interior():
    # A 5x5x5 cube and its centre voxel: the centre is 2 voxels from the cube's surface,
    # nearest along axis 0: 2 x 1.5 mm = 3 mm (axis 1: 4 mm, axis 2: 6 mm).
    spacing = (1.5, 2.0, 3.0)
    cube = np.zeros((7, 7, 7), dtype=bool)
    cube[1:6, 1:6, 1:6] = True
    centre = _mask((7, 7, 7), [(3, 3, 3)])
    np.testing.assert_allclose(directed_surface_distances(centre, cube, spacing), [3.0])


def test_surface_includes_voxels_on_the_array_border():
    full = np.ones((3, 3, 3), dtype=bool)
    surface = surface_voxels(full)
    assert surface.sum() == 26 and not surface[1, 1, 1]
    assert surface_voxels(np.ones((4, 4, 1), dtype=bool)).all()


def test_surface_uses_face_neighbours_only():
    # A 3D plus sign: the centre and its six face neighbours. The centre has all six face
    # neighbours set, so it is interior (it would be surface if edge or corner neighbours
    # counted); the six arms are surface.
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[2, 2, 2] = True
    for axis in range(3):
        for step in (-1, 1):
            voxel = [2, 2, 2]
            voxel[axis] += step
            mask[tuple(voxel)] = True
    surface = surface_voxels(mask)
    assert surface.sum() == 6 and not surface[2, 2, 2]


def _reference_hd95(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Brute force: explicit face-neighbour surfaces, all pairwise distances, linear percentile."""

    def surface(mask):
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for axis in range(3):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return mask & ~inner

    a = np.argwhere(surface(pred)) * np.asarray(spacing)
    b = np.argwhere(surface(gt)) * np.asarray(spacing)
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(pairwise.min(1), 95), np.percentile(pairwise.min(0), 95))


def test_hd95_matches_brute_force_on_seeded_volumes():
    rng = np.random.default_rng(1234)
    for _ in range(5):
        pred = rng.random((9, 8, 7)) > 0.8
        gt = rng.random((9, 8, 7)) > 0.7
        value = hd95(pred, gt, SPACING)
        assert value == pytest.approx(_reference_hd95(pred, gt, SPACING), abs=1e-9)
        assert value == pytest.approx(hd95(gt, pred, SPACING), abs=1e-12)


# ---------------------------------------------------------------- per-case rows


def test_case_region_metrics_rows():
    # WT: the hand case; TC: identical single voxels; ET: both empty.
    pred = np.stack([PRED, _mask(PRED.shape, [(1, 1, 1)]), np.zeros_like(PRED)])
    gt = np.stack([GT, _mask(GT.shape, [(1, 1, 1)]), np.zeros_like(GT)])
    rows = case_region_metrics(pred, gt, SPACING)
    assert [r.region for r in rows] == ["WT", "TC", "ET"]
    wt, tc, et = rows
    assert wt.dice == pytest.approx(4 / 7)
    assert wt.sensitivity == pytest.approx(0.5)
    assert wt.specificity == pytest.approx(0.95)
    assert wt.gt_volume_ml == pytest.approx(0.0108)
    assert wt.pred_volume_ml == pytest.approx(0.0081)
    assert (tc.dice, tc.hd95, tc.sensitivity, tc.specificity) == (1.0, 0.0, 1.0, 1.0)
    assert (et.dice, et.hd95, et.gt_volume_ml, et.pred_volume_ml) == (1.0, 0.0, 0.0, 0.0)


def test_case_region_metrics_checks_channel_count():
    with pytest.raises(ValueError, match="expected regions"):
        case_region_metrics(np.zeros((2, 3, 3, 3), bool), np.zeros((2, 3, 3, 3), bool), SPACING)
