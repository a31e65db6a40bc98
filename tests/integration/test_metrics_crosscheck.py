"""Cross-check Dice and HD95 against MONAI's independent implementation on real BraTS labels.

For a few real BraTS 2018 ground truths, each region (WT, TC, ET) is scored against three
kinds of imperfect "prediction": (a) the ground truth eroded by one voxel, (b) the ground
truth shifted by a few voxels, (c) another case's ground truth. Our values must agree with
``monai.metrics.DiceMetric`` to 1e-6 and ``HausdorffDistanceMetric(percentile=95)`` to
0.01 mm, at the files' own spacing and at a made-up anisotropic spacing. Arrays are cropped
to the pair's bounding box plus a margin first: both implementations only look at the
foreground, so cropping changes no value and keeps the test fast.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from distill.data.conventions import get_convention
from distill.data.nifti import read_nifti, write_nifti
from distill.eval.dice import dice
from distill.eval.evaluate import EvaluateConfig, evaluate
from distill.eval.hausdorff import hd95
from distill.eval.policy import policy_value
from distill.eval.region_metrics import case_region_metrics

monai_metrics = pytest.importorskip("monai.metrics")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.realdata

# Large, medium and small tumours; TCIA10_628 has a tiny ET (1,976 voxels).
CASES = ("Brats18_2013_3_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA10_628_1")
ANISOTROPIC = (1.2, 0.9, 2.5)
DICE_TOL = 1e-6
HD95_TOL_MM = 0.01
MARGIN = 3


def _regions(brats18_dir: Path, case: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    volume = read_nifti(brats18_dir / case / f"{case}_seg.nii.gz")
    return get_convention("brats2017").to_regions(volume.data), volume.spacing


def _shift(mask: np.ndarray, offset: tuple[int, ...]) -> np.ndarray:
    """Translate a (C, X, Y, Z) stack by ``offset`` voxels, filling with background (no wrap)."""
    out = np.zeros_like(mask)
    src, dst = [slice(None)], [slice(None)]
    for step, size in zip(offset, mask.shape[1:]):
        src.append(slice(max(-step, 0), size - max(step, 0)))
        dst.append(slice(max(step, 0), size - max(-step, 0)))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_erosion(channel) for channel in mask])


def _crop(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    union = (pred | gt).any(axis=0)
    box = [slice(None)]
    for axis in range(3):
        hits = np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hits[0]) - MARGIN, 0), min(int(hits[-1]) + MARGIN + 1, union.shape[axis])))
    return pred[tuple(box)], gt[tuple(box)]


def _monai(pred: np.ndarray, gt: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    y_pred = torch.from_numpy(pred[None].astype(np.float32))
    y = torch.from_numpy(gt[None].astype(np.float32))
    dice_metric = monai_metrics.DiceMetric(include_background=True, reduction="none")
    hd_metric = monai_metrics.HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty channels; the policy covers them
        dices = dice_metric(y_pred=y_pred, y=y)[0].numpy()
        hds = hd_metric(y_pred=y_pred, y=y, spacing=list(spacing))[0].numpy()
    return dices.astype(np.float64), hds.astype(np.float64)


@pytest.fixture(scope="module")
def ground_truths(brats18_dir: Path) -> dict[str, tuple[np.ndarray, tuple[float, float, float]]]:
    missing = [c for c in CASES if not (brats18_dir / c).is_dir()]
    if missing:
        pytest.skip(f"real cases {missing} not present")
    return {case: _regions(brats18_dir, case) for case in CASES}


def _pairs(ground_truths):
    cases = list(ground_truths)
    for i, case in enumerate(cases):
        gt, spacing = ground_truths[case]
        other = ground_truths[cases[(i + 1) % len(cases)]][0]
        yield f"{case}/eroded", _erode(gt), gt, spacing
        yield f"{case}/shifted", _shift(gt, (2, -3, 1)), gt, spacing
        yield f"{case}/other-case", other, gt, spacing


def test_dice_and_hd95_agree_with_monai(ground_truths):
    max_dice_delta = max_hd_delta = 0.0
    compared = 0
    for name, pred, gt, file_spacing in _pairs(ground_truths):
        pred, gt = _crop(pred, gt)
        for spacing in (file_spacing, ANISOTROPIC):
            monai_dice, monai_hd = _monai(pred, gt, spacing)
            for index, region in enumerate(("WT", "TC", "ET")):
                ours_dice = dice(pred[index], gt[index])
                ours_hd = hd95(pred[index], gt[index], spacing)
                gt_empty, pred_empty = not gt[index].any(), not pred[index].any()
                if gt_empty or pred_empty:
                    # MONAI gives NaN/inf here; ours must follow the declared policy instead.
                    assert ours_dice == policy_value("dice", gt_empty, pred_empty)
                    assert ours_hd == policy_value("hd95", gt_empty, pred_empty)
                    continue
                where = f"{name} {region} spacing={spacing}"
                assert abs(ours_dice - monai_dice[index]) <= DICE_TOL, where
                assert abs(ours_hd - monai_hd[index]) <= HD95_TOL_MM, where
                max_dice_delta = max(max_dice_delta, abs(ours_dice - monai_dice[index]))
                max_hd_delta = max(max_hd_delta, abs(ours_hd - monai_hd[index]))
                compared += 1
    # 3 cases x 3 perturbations x 2 spacings x 3 regions, none empty for these cases.
    assert compared == 54
    print(f"\ncross-check vs MONAI over {compared} pairs: max |d dice| = {max_dice_delta:.3g}, "
          f"max |d hd95| = {max_hd_delta:.3g} mm")


def test_perturbations_are_not_trivial(ground_truths):
    """Guard the cross-check itself: each perturbation must actually change the scores."""
    for name, pred, gt, spacing in _pairs(ground_truths):
        pred, gt = _crop(pred, gt)
        rows = case_region_metrics(pred, gt, spacing)
        assert all(r.dice < 1.0 for r in rows), name
        assert all(r.hd95 > 0.0 for r in rows), name


def test_evaluate_on_real_cases(brats18_dir, ground_truths, tmp_path):
    """The folder runner on two real cases: GT folders copied as-is, shifted predictions."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    convention = get_convention("brats2017")
    expected = {}
    for case in CASES[:2]:
        shutil.copytree(brats18_dir / case, gt_dir / case)
        volume = read_nifti(gt_dir / case / f"{case}_seg.nii.gz")
        regions, spacing = ground_truths[case]
        shifted = _shift(regions, (2, -3, 1))
        write_nifti(pred_dir / f"{case}.nii.gz", convention.from_regions(shifted), volume.affine)
        expected[case] = case_region_metrics(*_crop(shifted, regions), spacing)
    result = evaluate(EvaluateConfig(pred_dir=pred_dir, gt_dir=gt_dir, out_dir=tmp_path / "out", progress=False))
    assert result.conventions == {"prediction": "brats2017", "ground_truth": "brats2017"}
    for case_result in result.cases:
        for got, want in zip(case_result.regions, expected[case_result.case]):
            assert got.dice == pytest.approx(want.dice, abs=1e-12)
            assert got.hd95 == pytest.approx(want.hd95, abs=1e-9)
            assert got.gt_volume_ml == pytest.approx(want.gt_volume_ml, rel=1e-9)
