"""End-to-end evaluation of small NIfTI folders with a non-identity affine.

Layout of the hand-made data (shape 6x5x4, spacing 1.2 x 0.9 x 2.5 mm, one voxel = 2.7 mm³
= 0.0027 ml; BraTS 2017 labels 1 NCR, 2 ED, 4 ET; voxels listed along axis 0 at y=1, z=1):

=====  ===========================  =============================  ===========================
case   ground truth                 prediction                     per region
=====  ===========================  =============================  ===========================
A      x1:4  x2:1  x3:2             identical                      all perfect
B      x1:4  x2:1  x3:2 (+x3,y2:2)  everything labelled 2 (ED)     WT perfect, TC/ET missed
C      x1:2  x2:2                   x1:2  x4:4                     see test_metrics_csv
=====  ===========================  =============================  ===========================
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from distill.data.nifti import write_nifti
from distill.errors import DataError, LabelConventionError
from distill.eval.evaluate import EvaluateConfig, evaluate

SHAPE = (6, 5, 4)
VOXEL_ML = 1.2 * 0.9 * 2.5 / 1000.0
MAX_HD = 373.13

GT_LABELS = {
    "A": {(1, 1, 1): 4, (2, 1, 1): 1, (3, 1, 1): 2},
    "B": {(1, 1, 1): 4, (2, 1, 1): 1, (3, 1, 1): 2, (3, 2, 1): 2},
    "C": {(1, 1, 1): 2, (2, 1, 1): 2},
}
PRED_LABELS = {
    "A": GT_LABELS["A"],
    "B": {(1, 1, 1): 2, (2, 1, 1): 2, (3, 1, 1): 2, (3, 2, 1): 2},
    "C": {(1, 1, 1): 2, (4, 1, 1): 4},
}
CASE_IDS = {"A": "Brats18_A_1", "B": "Brats18_B_1", "C": "Brats18_C_1"}


def _volume(labels: dict[tuple[int, int, int], int], dtype=np.uint8) -> np.ndarray:
    out = np.zeros(SHAPE, dtype=dtype)
    for voxel, value in labels.items():
        out[voxel] = value
    return out


def _write_gt(root: Path, affine: np.ndarray) -> None:
    """BraTS 2017-2021 case folders: four (empty) modalities and the seg file."""
    for key, case in CASE_IDS.items():
        folder = root / case
        for modality in ("t1", "t1ce", "t2", "flair"):
            write_nifti(folder / f"{case}_{modality}.nii.gz", np.zeros(SHAPE, np.float32), affine)
        write_nifti(folder / f"{case}_seg.nii.gz", _volume(GT_LABELS[key]), affine)


def _write_pred(root: Path, affine: np.ndarray, labels=PRED_LABELS, remap=None) -> None:
    """A flat prediction folder of <case>.nii.gz, optionally relabelled through ``remap``."""
    for key, case in CASE_IDS.items():
        data = _volume(labels[key])
        if remap is not None:
            data = np.vectorize(lambda v: remap.get(int(v), int(v)))(data).astype(np.uint8)
        write_nifti(root / f"{case}.nii.gz", data, affine)


@pytest.fixture
def dirs(tmp_path: Path, oblique_affine: np.ndarray) -> dict[str, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write_gt(gt, oblique_affine)
    _write_pred(pred, oblique_affine)
    return {"gt": gt, "pred": pred, "out": tmp_path / "out"}


def _config(dirs, **kwargs) -> EvaluateConfig:
    return EvaluateConfig(pred_dir=dirs["pred"], gt_dir=dirs["gt"], out_dir=dirs["out"], progress=False, **kwargs)


# Hand expectations for case C (see the module docstring):
# WT: gt {x1, x2}, pred {x1, x4}. Dice 2*1/4 = 0.5. Surfaces are all four voxels.
#   pred->gt: x1 -> 0, x4 -> x2 at 2 * 1.2 = 2.4 mm; P95 of [0, 2.4] = 0.95 * 2.4 = 2.28.
#   gt->pred: x1 -> 0, x2 -> x1 at 1.2 mm;         P95 of [0, 1.2] = 1.14.   HD95 = 2.28.
#   Sensitivity 1/2. Specificity: 120 voxels, 118 negatives, 1 FP -> 117/118.
# TC and ET: gt empty, pred {x4}: Dice 0, HD95 373.13, sensitivity 1, specificity 119/120.
EXPECTED_ROWS = {
    ("Brats18_A_1", "WT"): (1.0, 0.0, 1.0, 1.0, 3 * VOXEL_ML, 3 * VOXEL_ML),
    ("Brats18_A_1", "TC"): (1.0, 0.0, 1.0, 1.0, 2 * VOXEL_ML, 2 * VOXEL_ML),
    ("Brats18_A_1", "ET"): (1.0, 0.0, 1.0, 1.0, 1 * VOXEL_ML, 1 * VOXEL_ML),
    ("Brats18_B_1", "WT"): (1.0, 0.0, 1.0, 1.0, 4 * VOXEL_ML, 4 * VOXEL_ML),
    ("Brats18_B_1", "TC"): (0.0, MAX_HD, 0.0, 1.0, 2 * VOXEL_ML, 0.0),
    ("Brats18_B_1", "ET"): (0.0, MAX_HD, 0.0, 1.0, 1 * VOXEL_ML, 0.0),
    ("Brats18_C_1", "WT"): (0.5, 2.28, 0.5, 117 / 118, 2 * VOXEL_ML, 2 * VOXEL_ML),
    ("Brats18_C_1", "TC"): (0.0, MAX_HD, 1.0, 119 / 120, 0.0, 1 * VOXEL_ML),
    ("Brats18_C_1", "ET"): (0.0, MAX_HD, 1.0, 119 / 120, 0.0, 1 * VOXEL_ML),
}
COLUMNS = ["case", "region", "dice", "hd95", "sensitivity", "specificity", "gt_volume_ml", "pred_volume_ml"]


def _pop_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def test_metrics_csv(dirs):
    result = evaluate(_config(dirs))
    assert result.csv_path == dirs["out"] / "metrics.csv"
    with result.csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert [(r["case"], r["region"]) for r in rows] == list(EXPECTED_ROWS)
    for row in rows:
        expected = EXPECTED_ROWS[(row["case"], row["region"])]
        got = tuple(float(row[c]) for c in COLUMNS[2:])
        # Affines round-trip through float32 in the NIfTI header, hence the tolerance.
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-9), (row["case"], row["region"])
    assert [c.case for c in result.cases] == list(CASE_IDS.values())
    assert result.conventions == {"prediction": "brats2017", "ground_truth": "brats2017"}


def test_summary_json_statistics(dirs):
    result = evaluate(_config(dirs))
    summary = json.loads(result.json_path.read_text())
    assert summary == result.summary
    assert summary["n_cases"] == 3
    wt, tc = summary["per_region"]["WT"], summary["per_region"]["TC"]
    assert wt["n_cases"] == 3
    # WT Dice [1, 1, 0.5]: mean 5/6, median 1, std sqrt(1/18).
    assert wt["dice"] == pytest.approx({"mean": 5 / 6, "median": 1.0, "std": math.sqrt(1 / 18)})
    # TC Dice [1, 0, 0]: mean 1/3, median 0, std sqrt(2/9); HD95 [0, 373.13, 373.13].
    assert tc["dice"] == pytest.approx({"mean": 1 / 3, "median": 0.0, "std": math.sqrt(2 / 9)})
    assert tc["hd95"] == pytest.approx({"mean": 2 * MAX_HD / 3, "median": MAX_HD, "std": _pop_std([0, MAX_HD, MAX_HD])})
    assert wt["hd95"]["mean"] == pytest.approx(2.28 / 3, rel=1e-6)
    assert summary["empty_mask_policy"]["hd95"]["gt empty, pred not"] == MAX_HD
    assert summary["unmatched_predictions"] == []


def test_summary_size_strata_by_tertiles(dirs):
    strata = evaluate(_config(dirs)).summary["size_strata"]
    assert "tertiles" in strata["definition"]
    wt = strata["per_region"]["WT"]
    # WT volumes: C 2, A 3, B 4 voxels. Tertiles (linear): 2 + 2/3 and 3 + 1/3 voxels.
    assert wt["rule"] == "tertiles"
    assert wt["thresholds_ml"] == pytest.approx([(2 + 2 / 3) * VOXEL_ML, (3 + 1 / 3) * VOXEL_ML], rel=1e-6)
    assert (wt["small"]["cases"], wt["medium"]["cases"], wt["large"]["cases"]) == (
        ["Brats18_C_1"],
        ["Brats18_A_1"],
        ["Brats18_B_1"],
    )
    assert wt["empty"]["n_cases"] == 0 and wt["empty"]["dice"] is None
    assert wt["small"]["dice"] == {"mean": 0.5, "median": 0.5, "std": 0.0}
    # TC: C has no tumour core in its ground truth.
    assert strata["per_region"]["TC"]["empty"]["cases"] == ["Brats18_C_1"]


def test_summary_size_strata_with_fixed_thresholds(dirs):
    summary = evaluate(_config(dirs, size_thresholds_ml={"WT": (0.006, 0.01)})).summary
    wt = summary["size_strata"]["per_region"]["WT"]
    # 2, 3, 4 voxels = 0.0054, 0.0081, 0.0108 ml against 0.006 and 0.01 ml.
    assert wt["rule"] == "fixed" and wt["thresholds_ml"] == [0.006, 0.01]
    assert (wt["small"]["cases"], wt["medium"]["cases"], wt["large"]["cases"]) == (
        ["Brats18_C_1"],
        ["Brats18_A_1"],
        ["Brats18_B_1"],
    )
    assert summary["size_strata"]["per_region"]["ET"]["rule"] == "tertiles"


def test_summary_worst_cases(dirs):
    worst = evaluate(_config(dirs, worst_k=2)).summary["worst_cases"]
    # WT: C (0.5) first; A and B tie at Dice 1 and HD95 0, so the case id decides.
    assert [w["case"] for w in worst["WT"]] == ["Brats18_C_1", "Brats18_A_1"]
    assert worst["WT"][0]["dice"] == 0.5
    # TC: B and C both Dice 0, HD95 373.13.
    assert [w["case"] for w in worst["TC"]] == ["Brats18_B_1", "Brats18_C_1"]


def test_outputs_are_written_without_leftovers(dirs):
    evaluate(_config(dirs))
    assert sorted(p.name for p in dirs["out"].iterdir()) == ["metrics.csv", "summary.json"]


def test_prediction_in_another_convention(tmp_path, dirs, oblique_affine):
    # The same predictions in nnU-Net numbering (1 ED, 2 NCR, 3 ET) score the same once named.
    pred = tmp_path / "pred_nnunet"
    _write_pred(pred, oblique_affine, remap={2: 1, 1: 2, 4: 3})
    reference = evaluate(_config(dirs)).summary["per_region"]
    dirs = {**dirs, "pred": pred, "out": tmp_path / "out2"}
    with pytest.raises(LabelConventionError, match=re.escape(str(pred))):
        evaluate(_config(dirs))  # {1, 2, 3} in a flat folder is ambiguous
    assert evaluate(_config(dirs, pred_convention="nnunet")).summary["per_region"] == reference


def test_extra_predictions_are_listed_not_scored(dirs, oblique_affine):
    write_nifti(dirs["pred"] / "Brats18_Z_1.nii.gz", _volume({}), oblique_affine)
    result = evaluate(_config(dirs))
    assert result.summary["unmatched_predictions"] == ["Brats18_Z_1"]
    assert result.summary["n_cases"] == 3


# ---------------------------------------------------------------- bad input


def test_missing_prediction(dirs):
    (dirs["pred"] / "Brats18_B_1.nii.gz").unlink()
    with pytest.raises(DataError, match="no prediction") as err:
        evaluate(_config(dirs))
    assert "Brats18_B_1" in str(err.value) and str(dirs["pred"]) in str(err.value)
    assert not (dirs["out"] / "summary.json").exists()


def test_shape_mismatch_names_both_files(dirs, oblique_affine):
    pred_file = dirs["pred"] / "Brats18_A_1.nii.gz"
    write_nifti(pred_file, np.zeros((6, 5, 3), np.uint8), oblique_affine)
    with pytest.raises(DataError, match="shape") as err:
        evaluate(_config(dirs, pred_convention="brats2017"))
    assert str(pred_file) in str(err.value) and "Brats18_A_1_seg.nii.gz" in str(err.value)


def test_affine_mismatch_names_both_files(dirs, oblique_affine):
    shifted = oblique_affine.copy()
    shifted[0, 3] += 0.5
    pred_file = dirs["pred"] / "Brats18_C_1.nii.gz"
    write_nifti(pred_file, _volume(PRED_LABELS["C"]), shifted)
    with pytest.raises(DataError, match="affine") as err:
        evaluate(_config(dirs))
    assert str(pred_file) in str(err.value) and "Brats18_C_1_seg.nii.gz" in str(err.value)


def test_unknown_label_value_names_the_file(dirs, oblique_affine):
    pred_file = dirs["pred"] / "Brats18_B_1.nii.gz"
    write_nifti(pred_file, _volume({(0, 0, 0): 5, (1, 1, 1): 4}), oblique_affine)
    with pytest.raises(LabelConventionError, match=r"\[5\]") as err:
        evaluate(_config(dirs, pred_convention="brats2017"))
    assert str(pred_file) in str(err.value)


def test_unknown_label_value_with_auto_names_the_folder(dirs, oblique_affine):
    write_nifti(dirs["pred"] / "Brats18_B_1.nii.gz", _volume({(0, 0, 0): 5, (1, 1, 1): 4}), oblique_affine)
    with pytest.raises(LabelConventionError, match=r"\[5\]") as err:
        evaluate(_config(dirs))
    assert str(dirs["pred"]) in str(err.value)


def test_fractional_label_values_are_refused(dirs, oblique_affine):
    pred_file = dirs["pred"] / "Brats18_A_1.nii.gz"
    data = _volume(PRED_LABELS["A"], dtype=np.float32)
    data[0, 0, 0] = 1.5
    write_nifti(pred_file, data, oblique_affine)
    with pytest.raises(LabelConventionError, match="non-integer") as err:
        evaluate(_config(dirs, pred_convention="brats2017"))
    assert str(pred_file) in str(err.value)


def test_config_validation(dirs):
    with pytest.raises(ValueError, match="worst_k"):
        _config(dirs, worst_k=-1)
    with pytest.raises(ValueError, match="unknown region"):
        _config(dirs, size_thresholds_ml={"NCR": (1.0, 2.0)})
    with pytest.raises(ValueError, match="low <= high"):
        _config(dirs, size_thresholds_ml={"WT": (5.0, 1.0)})
