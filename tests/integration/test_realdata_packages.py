"""The shipped real-data student packages open, and re-score as their committed records say.

``benchmarks/realdata/final.py`` exports the chosen recipe's first seed at each size into
``benchmarks/realdata/packages/brats-<size>k`` and records the Dice it got on the four real
BraTS 2018 test cases (``final/records``). Re-running a package on one of those cases must give
the same Dice: this guards the whole prediction path (channel order, preprocessing, the network,
the way back to 1 mm, thresholds, post-processing, label conventions) against silent drift.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from distill.data.case import load_case
from distill.data.conventions import get_convention
from distill.data.discovery import MODALITIES, find_cases
from distill.eval.dice import dice
from distill.infer.predictor import Predictor
from distill.package import ModelPackage

REALDATA = Path(__file__).resolve().parents[2] / "benchmarks" / "realdata"
RECORDS = REALDATA / "final" / "records"
RECORDED = [json.loads(path.read_text()) for path in sorted(RECORDS.glob("final_*k_*_seed*.json"))]
SHIPPED = {f"{r['size'] // 1000}k": r for r in RECORDED if r.get("package")}  # the students final.py packaged


def test_each_size_ships_one_verified_package_named_by_its_recipe():
    assert sorted(r["size"] for r in RECORDED if r.get("package")) == [30_000, 100_000]
    for size, record in SHIPPED.items():
        assert record["package"] == f"packages/brats-{size}"
        package = ModelPackage.open(REALDATA / record["package"], verify=True)  # checks every file's sha256
        assert package.modalities == ("t1", "t1ce", "t2", "flair")
        assert package.manifest.model.parameters == record["parameters"]
        assert record["variant"] not in ("gt", "gt_long", "gt_strong")  # a distilled student ships
        # the post-processing the validation cases chose travels in the package
        assert dict(package.postprocess_config.min_size) == {"WT": record["postprocess"]["wt_min_ml"]}


@pytest.mark.realdata
@pytest.mark.parametrize("size", ["100k", "30k"])
def test_a_shipped_package_reproduces_its_recorded_dice(brats18_dir, size):
    record = SHIPPED[size]
    case_id = "Brats18_TCIA01_378_1"
    files = next(f for f in find_cases(brats18_dir) if f.case_id == case_id)
    case = load_case(files)
    predictor = Predictor.from_package(REALDATA / record["package"], "onnxruntime", threads=2)
    labels = predictor.segment(case.images, case.affine, modalities=MODALITIES).labels
    predicted = get_convention("brats2017").to_regions(labels)
    expert = get_convention("brats2017").to_regions(case.labels)
    for index, region in enumerate(("WT", "TC", "ET")):
        recorded = record["vs_ground_truth"]["per_case"][case_id][region]["dice"]
        assert dice(predicted[index], expert[index]) == pytest.approx(recorded, abs=2e-3), region
    assert np.isin(labels, (0, 1, 2, 4)).all()


@pytest.mark.realdata
def test_labels_only_prediction_matches_the_full_restore_on_a_real_case(brats18_dir):
    """Without probabilities asked for, the predictor resamples only the box where a map can
    cross its threshold; its labels must be those of resampling and thresholding everything,
    except where a map sits within float rounding of its threshold."""
    files = next(f for f in find_cases(brats18_dir) if f.case_id == "Brats18_CBICA_ALU_1")
    case = load_case(files, with_labels=False)
    predictor = Predictor.from_package(REALDATA / SHIPPED["100k"]["package"], "onnxruntime", threads=2)
    fast = predictor.segment(case.images, case.affine, modalities=MODALITIES)
    full = predictor.segment(case.images, case.affine, modalities=MODALITIES, return_probabilities=True)
    thresholds = np.asarray(predictor.package.thresholds, np.float32).reshape(-1, 1, 1, 1)
    near = np.any(np.abs(full.probabilities - thresholds) < 1e-5, axis=0)
    assert (full.labels > 0).sum() > 10_000  # a real tumour, not two empty maps
    np.testing.assert_array_equal(fast.labels[~near], full.labels[~near])
