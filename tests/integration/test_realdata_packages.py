"""The committed real-data student packages open, and re-score as the committed report says.

``benchmarks/realdata/`` commits eight exported students and the scores they got on four real
BraTS 2018 test cases. Re-running one package on one of those cases must give the same Dice:
this guards the whole prediction path (channel order, preprocessing, the network, the way back
to 1 mm, thresholds, label conventions) against silent drift.
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
RESULTS = json.loads((REALDATA / "results.json").read_text())
PACKAGED = [row for row in RESULTS["models"] if row.get("package", "").startswith("packages/")]  # the committed ones


def test_every_ladder_student_of_the_first_seed_is_committed_and_verifies():
    assert len(PACKAGED) == 8
    for row in PACKAGED:
        package = ModelPackage.open(REALDATA / row["package"], verify=True)  # checks every file's sha256
        assert package.modalities == ("t1", "t1ce", "t2", "flair")
        assert row["parameters"] in (29_179, 100_772)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["100k_d_kd_chain_graphflow", "30k_a_no_kd"])
def test_a_committed_package_reproduces_its_reported_dice(brats18_dir, name):
    row = next(r for r in PACKAGED if r["model"] == name)
    case_id = "Brats18_TCIA01_378_1"
    assert case_id in RESULTS["split"]["test"]
    files = next(f for f in find_cases(brats18_dir) if f.case_id == case_id)
    case = load_case(files)
    predictor = Predictor.from_package(REALDATA / row["package"], "onnxruntime", threads=2)
    labels = predictor.segment(case.images, case.affine, modalities=MODALITIES).labels
    predicted = get_convention("brats2017").to_regions(labels)
    expert = get_convention("brats2017").to_regions(case.labels)
    for index, region in enumerate(("WT", "TC", "ET")):
        reported = row["per_case"][case_id][region]["dice"]
        assert dice(predicted[index], expert[index]) == pytest.approx(reported, abs=2e-3), region
    assert np.isin(labels, (0, 1, 2, 4)).all()


@pytest.mark.realdata
def test_labels_only_prediction_matches_the_full_restore_on_a_real_case(brats18_dir):
    """Without probabilities asked for, the predictor resamples only the box where a map can
    cross its threshold; its labels must be those of resampling and thresholding everything,
    except where a map sits within float rounding of its threshold."""
    row = next(r for r in PACKAGED if r["model"] == "100k_d_kd_chain_graphflow")
    files = next(f for f in find_cases(brats18_dir) if f.case_id == "Brats18_CBICA_ALU_1")
    case = load_case(files, with_labels=False)
    predictor = Predictor.from_package(REALDATA / row["package"], "onnxruntime", threads=2)
    fast = predictor.segment(case.images, case.affine, modalities=MODALITIES)
    full = predictor.segment(case.images, case.affine, modalities=MODALITIES, return_probabilities=True)
    thresholds = np.asarray(predictor.package.thresholds, np.float32).reshape(-1, 1, 1, 1)
    near = np.any(np.abs(full.probabilities - thresholds) < 1e-5, axis=0)
    assert (full.labels > 0).sum() > 10_000  # a real tumour, not two empty maps
    np.testing.assert_array_equal(fast.labels[~near], full.labels[~near])
