"""benchmarks/uncertainty/measure.py's bookkeeping on inputs worked out by hand: one case's measures,
the pooled summary's undefined cases, and the protocol's Dice with minus without the head."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from script_module import script_module

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "uncertainty" / "measure.py"


@pytest.fixture(scope="module")
def measure():
    with script_module(SCRIPT, "uncertainty_measure") as module:
        yield module


def test_one_case_by_hand(measure):
    # six voxels, the last outside the brain. WT: truth 1 1 0 0 0 0, student 1 0 1 0 0 0 -> errors
    # at voxels 1 and 2. TC and ET: truth and student agree (all 0) -> no error to find.
    truth = np.zeros((3, 6), bool)
    truth[0, :2] = True
    segmented = np.zeros((3, 6), bool)
    segmented[0, [0, 2]] = True
    brain = np.array([1, 1, 1, 1, 1, 0], bool)
    head = np.tile([0.1, 0.4, 0.3, 0.0, 0.0, 0.9], (3, 1))  # the errors score highest inside the brain
    entropy = np.tile([0.5, 0.2, 0.1, 0.3, 0.4, 0.0], (3, 1))  # the errors score lowest but one
    teacher = head * 0.5  # same order as the head
    measures = measure.case_measures(truth, brain, segmented, {"head": head, "entropy": entropy, "teacher": teacher},
                                     fraction=0.2, plain_segmented=truth)  # fmt: skip
    wt = measures["regions"]["WT"]
    assert measures["brain_voxels"] == 5 and wt["errors"] == 2 and wt["error_fraction"] == pytest.approx(0.4)
    assert wt["dice_head"] == pytest.approx(0.5) and wt["dice_no_head"] == 1.0  # 2 * 1 / (2 + 2)
    assert wt["spearman_vs_teacher"]["head"] == pytest.approx(1.0)
    # entropy in the brain 0.5 0.2 0.1 0.3 0.4 vs teacher 0.05 0.2 0.15 0 0 (ranks 1.5 1.5 tie):
    # ranks e = 5 2 1 3 4, t = 3 5 4 1.5 1.5 -> centred e: 2 -1 -2 0 1, t: 0 2 1 -1.5 -1.5
    # sum of products 0 - 2 - 2 + 0 - 1.5 = -5.5; squares 10 and 9.5: -5.5 / sqrt(95)
    assert wt["spearman_vs_teacher"]["entropy"] == pytest.approx(-5.5 / math.sqrt(95))
    # AUROC: head and teacher put both errors (0.4, 0.3) above the three others: 1. Entropy:
    # errors 0.2 and 0.1 beat none of 0.5, 0.3, 0.4: 0.
    assert wt["auroc"] == {"head": 1.0, "entropy": 0.0, "teacher": 1.0}
    # capture: 20 % of 5 voxels = 1 flagged; head and teacher flag voxel 1 (an error): 1 of 2
    assert wt["capture"] == {"head": 0.5, "entropy": 0.0, "teacher": 0.5}
    for region in ("TC", "ET"):  # nothing wrong: the error measures are undefined, Dice is 1 (both empty)
        r = measures["regions"][region]
        assert r["errors"] == 0 and r["dice_head"] == 1.0
        assert all(math.isnan(v) for v in (*r["auroc"].values(), *r["capture"].values()))


def test_undefined_cases_are_left_out_and_counted(measure):
    matrix = np.array([[0.6, 0.8], [np.nan, 0.5], [0.4, 0.4]])  # cases x seeds
    entry = measure._interval(matrix)
    assert entry["undefined_cases"] == 1 and entry["n_cases"] == 2 and entry["n_seeds"] == 2
    assert entry["mean"] == pytest.approx(0.55) and entry["median"] == pytest.approx(0.55)  # case means 0.7, 0.4
    assert measure._interval(np.full((2, 1), np.nan))["mean"] is None
    diff = measure._difference(np.array([[0.9], [np.nan], [0.7]]), np.array([[0.8], [0.1], [0.6]]))
    assert diff["mean"] == pytest.approx(0.1) and diff["n_cases"] == 2


def write_record(folder: Path, fold: int, variant: str, seed: int, dice: dict[str, float]) -> None:
    per_case = {case: {r: {"dice": d, "hd95": 1.0} for r in ("WT", "TC", "ET")} for case, d in dice.items()}
    path = folder / f"protocol_fold{fold}_30k_{variant}_seed{seed}.json"
    path.write_text(json.dumps({"vs_ground_truth": {"per_case": per_case}}))


def test_the_protocols_dice_pairs_cases_and_seeds_and_skips_unfinished_folds(measure, tmp_path):
    # fold 0 holds a, b; fold 1 holds c; fold 2 lacks its head records. With the head, +0.02 on
    # a and c and -0.04 on b, both seeds: mean (0.02 - 0.04 + 0.02) / 3 = 0.
    for seed in (0, 1):
        write_record(tmp_path, 0, "recipe", seed, {"a": 0.5, "b": 0.6})
        write_record(tmp_path, 0, "recipe_uncertainty", seed, {"a": 0.52, "b": 0.56})
        write_record(tmp_path, 1, "recipe", seed, {"c": 0.7})
        write_record(tmp_path, 1, "recipe_uncertainty", seed, {"c": 0.72})
        write_record(tmp_path, 2, "recipe", seed, {"d": 0.7})
    entry = measure.protocol_dice_difference(tmp_path, [0, 1, 2], 30_000, [0, 1])
    assert entry["folds_used"] == [0, 1] and entry["cases"] == ["a", "b", "c"]
    assert entry["missing"] == ["protocol_fold2_30k_recipe_uncertainty_seed0.json",
                                "protocol_fold2_30k_recipe_uncertainty_seed1.json"]  # fmt: skip
    mean = entry["mean_dice"]
    assert mean["head_minus_base"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert mean["head_minus_base"]["n_cases"] == 3 and mean["head_minus_base"]["n_seeds"] == 2
    assert mean["head"] == pytest.approx((0.52 + 0.56 + 0.72) / 3) and mean["not_worse"]
    # resampling 3 cases of +0.02, -0.04, +0.02: the lowest mean is -0.04, the highest +0.02
    assert -0.04 - 1e-9 <= mean["head_minus_base"]["low"] < 0 < mean["head_minus_base"]["high"] <= 0.02 + 1e-9


def test_a_head_that_costs_dice_everywhere_is_flagged(measure, tmp_path):
    write_record(tmp_path, 0, "recipe", 0, {"a": 0.6, "b": 0.7})
    write_record(tmp_path, 0, "recipe_uncertainty", 0, {"a": 0.5, "b": 0.6})
    entry = measure.protocol_dice_difference(tmp_path, [0], 30_000, [0])
    assert entry["WT"]["head_minus_base"]["high"] == pytest.approx(-0.1) and not entry["WT"]["not_worse"]
    assert entry["mean_dice"]["head_minus_base"]["verdict"] == "B better"
    assert measure.protocol_dice_difference(tmp_path, [3], 30_000, [0])["cases"] == []  # nothing recorded yet


def test_a_calibrated_record_is_read_from_its_half_threshold_twin(measure, tmp_path):
    # the base package was calibrated on one case (WT 0.9) and scored 0.1; at 0.5 it scores 0.7
    write_record(tmp_path, 0, "recipe_uncertainty", 0, {"a": 0.65})
    twin = tmp_path / "protocol_fold0_30k_recipe_seed0_t050.json"
    write_record(tmp_path, 0, "recipe", 0, {"a": 0.7})
    (tmp_path / "protocol_fold0_30k_recipe_seed0.json").rename(twin)
    write_record(tmp_path, 0, "recipe", 0, {"a": 0.1})
    calibrated = tmp_path / "protocol_fold0_30k_recipe_seed0.json"
    calibrated.write_text(json.dumps({**json.loads(calibrated.read_text()),
                                      "thresholds": {"WT": 0.9, "TC": 0.5, "ET": 0.5}}))  # fmt: skip
    entry = measure.protocol_dice_difference(tmp_path, [0], 30_000, [0])
    assert entry["mean_dice"]["base"] == pytest.approx(0.7)
    assert entry["mean_dice"]["head_minus_base"]["mean"] == pytest.approx(-0.05)
