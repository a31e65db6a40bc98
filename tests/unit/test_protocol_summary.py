"""The fold-matched protocol's summary: cases paired across variants, teacher and seeds, by hand."""

import importlib.util
import sys
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[2] / "benchmarks" / "realdata"


@pytest.fixture
def protocol():
    sys.path.insert(0, str(FOLDER))
    try:
        spec = importlib.util.spec_from_file_location("protocol", FOLDER / "protocol.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(FOLDER))


def scores(per_case: dict[str, float]) -> dict:
    """A stage record whose three regions all have the given Dice per case."""
    return {"vs_ground_truth": {"per_case": {case: {r: {"dice": d, "hd95": 1.0} for r in ("WT", "TC", "ET")}
                                             for case, d in per_case.items()}}}  # fmt: skip


class Records:
    def __init__(self, records):
        self.records = records

    def done(self, stage):
        return self.records.get(stage)


def test_differences_pair_the_same_case_across_folds_and_seeds(protocol):
    # fold 0 holds cases a, b; fold 1 holds c. Label-only students score 0.5 everywhere; the KD
    # student is +0.1 on a and c, -0.1 on b (both seeds); the teacher scores 0.8, 0.6, 0.7.
    records = {"protocol_fold0_teacher": scores({"a": 0.8, "b": 0.6}), "protocol_fold1_teacher": scores({"c": 0.7})}
    for seed in (0, 1):
        records[protocol.student_stage(0, 30_000, "gt", seed)] = scores({"a": 0.5, "b": 0.5})
        records[protocol.student_stage(1, 30_000, "gt", seed)] = scores({"c": 0.5})
        records[protocol.student_stage(0, 30_000, "recipe", seed)] = scores({"a": 0.6, "b": 0.4})
        records[protocol.student_stage(1, 30_000, "recipe", seed)] = scores({"c": 0.6})
    summary = protocol.summarise(Records(records), [0, 1], [30_000], ["gt", "recipe"], [0, 1])
    entry = summary["sizes"]["30000"]
    assert summary["cases"] == ["a", "b", "c"]
    assert entry["teacher_minus_gt"]["mean"] == pytest.approx((0.3 + 0.1 + 0.2) / 3, abs=1e-4)
    assert entry["teacher_mean_dice"] == pytest.approx(0.7)
    recipe = entry["variants"]["recipe"]
    assert recipe["minus_gt"]["mean"] == pytest.approx(0.1 / 3, abs=1e-4)
    assert recipe["minus_gt"]["n_cases"] == 3 and recipe["minus_gt"]["n_seeds"] == 2
    assert recipe["retention_of_teacher"]["mean"] == pytest.approx((1.6 / 3) / 0.7, abs=1e-4)
    assert recipe["retention_of_teacher"]["goal"] == 0.95 and recipe["retention_of_teacher"]["goal_reached"] == "no"
    assert entry["variants"]["gt"]["retention_of_teacher"] is None and entry["variants"]["gt"]["minus_gt"] is None


def test_the_summary_table_names_every_variant(protocol, tmp_path):
    records = {"protocol_fold0_teacher": scores({"a": 0.8, "b": 0.6})}
    for variant, value in (("gt", 0.5), ("recipe", 0.78)):
        records[protocol.student_stage(0, 100_000, variant, 0)] = scores({"a": value, "b": value})
    summary = protocol.summarise(Records(records), [0], [100_000], ["gt", "recipe"], [0])
    protocol.write_summary(summary, tmp_path)
    table = (tmp_path / "SUMMARY.md").read_text()
    assert "| gt | 0.500 |" in table and "| recipe | 0.780 |" in table and "(goal 97%:" in table


def test_calibration_is_paired_with_the_same_students_at_half(protocol):
    # the recipe's students score 0.6 with their calibrated thresholds and 0.55 / 0.65 at 0.5
    records = {"protocol_fold0_teacher": scores({"a": 0.8, "b": 0.6})}
    records[protocol.student_stage(0, 30_000, "gt", 0)] = scores({"a": 0.5, "b": 0.5})
    records[protocol.student_stage(0, 30_000, "recipe", 0)] = scores({"a": 0.6, "b": 0.6})
    summary = protocol.summarise(Records(records), [0], [30_000], ["gt", "recipe"], [0])
    assert summary["sizes"]["30000"]["variants"]["recipe"]["calibrated_minus_default"] is None  # not scored yet
    records[protocol.default_thresholds_stage(0, 30_000, "recipe", 0)] = scores({"a": 0.55, "b": 0.45})
    summary = protocol.summarise(Records(records), [0], [30_000], ["gt", "recipe"], [0])
    effect = summary["sizes"]["30000"]["variants"]["recipe"]["calibrated_minus_default"]
    assert effect["mean"] == pytest.approx(0.1, abs=1e-4) and effect["n_cases"] == 2
