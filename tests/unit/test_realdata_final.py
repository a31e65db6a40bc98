"""The final real-data students' summary (benchmarks/realdata/final.py), checked by hand on records
of two test cases and two seeds."""

from pathlib import Path

import pytest

from tests.script_module import script_module

FOLDER = Path(__file__).resolve().parents[2] / "benchmarks" / "realdata"


@pytest.fixture
def final():
    import sys

    sys.path.insert(0, str(FOLDER))
    try:
        with script_module(FOLDER / "final.py", "realdata_final") as module:
            yield module
    finally:
        sys.path.remove(str(FOLDER))


def side(dice: dict[str, float], hd95: float) -> dict:
    return {"per_case": {case: {r: {"dice": d, "hd95": hd95} for r in ("WT", "TC", "ET")} for case, d in dice.items()}}


def student(dice, hd95, seconds):
    return {"parameters": 99_000, "package_bytes": 400 * 1024, "vs_ground_truth": side(dice, hd95),
            "vs_teacher": side({c: 0.9 for c in dice}, hd95),
            "seconds_per_case": {c: {"total": t, "model": t / 2} for c, t in seconds.items()},
            "machine": {"cpu": "x86_64", "cpu_count": 2, "load_average_1min": 0.5}}  # fmt: skip


class Records:
    def __init__(self, records):
        self.records = records

    def done(self, stage):
        return self.records.get(stage)


@pytest.fixture
def records(final):
    # teacher 0.8 / 0.6 (mean 0.7) at HD95 2 mm, 100 s / 120 s a case; the label-only student 0.5
    # everywhere; the distilled one 0.6 / 0.4 (seed 0) and 0.7 / 0.5 (seed 1) at HD95 4 mm, 1.0 s / 1.2 s
    stage = final.student_stage
    return Records({
        "final_ensemble_mirror8": {"passes_per_case": 40, "vs_ground_truth": side({"a": 0.8, "b": 0.6}, 2.0),
                                   "seconds_per_case": {"a": 100.0, "b": 120.0},
                                   "machine": {"cpu": "x86_64", "cpu_count": 2, "load_average_1min": 2.5}},
        "final_ensemble_none": {"passes_per_case": 5, "vs_ground_truth": side({"a": 0.75, "b": 0.55}, 2.5),
                                "seconds_per_case": {"a": 12.0, "b": 14.0}},
        "final_threshold": {"vs_ground_truth": side({"a": 0.3, "b": 0.3}, 20.0)},
        stage(100_000, "gt", 0): student({"a": 0.5, "b": 0.5}, 3.0, {"a": 1.0, "b": 1.2}),
        stage(100_000, "gt", 1): student({"a": 0.5, "b": 0.5}, 3.0, {"a": 1.0, "b": 1.2}),
        stage(100_000, "recipe_dice_kl", 0): student({"a": 0.6, "b": 0.4}, 4.0, {"a": 1.0, "b": 1.2}),
        stage(100_000, "recipe_dice_kl", 1): student({"a": 0.7, "b": 0.5}, 4.0, {"a": 1.0, "b": 1.2}),
    })  # fmt: skip


def test_scores_retention_and_latency_by_hand(final, records):
    summary = final.summarise(records, [100_000, 30_000], ["gt", "recipe_dice_kl"], [0, 1], "recipe_dice_kl")
    assert summary["teacher"]["mean_dice"] == pytest.approx(0.7)
    assert summary["teacher_no_tta"]["mean_dice"] == pytest.approx(0.65)
    assert summary["threshold"]["teacher_minus_threshold"]["mean"] == pytest.approx(0.4)
    assert list(summary["sizes"]) == ["100000"]  # no 30k records: the size is left out, not faked
    entry = summary["sizes"]["100000"]
    assert entry["teacher_minus_gt"]["mean"] == pytest.approx(0.2)
    shipped = entry["variants"]["recipe_dice_kl"]
    assert shipped["mean_dice"] == pytest.approx(0.55)
    assert shipped["minus_gt"]["mean"] == pytest.approx(0.05)
    # cases and seeds are both resampled: the extremes are case b on seed 0 alone (0.4 / 0.6) and
    # case a on seed 1 alone (0.7 / 0.8), so every bootstrap ratio lies between them
    kept = shipped["retention_of_teacher"]
    assert kept["mean"] == pytest.approx(0.55 / 0.7, abs=1e-4)
    assert 0.4 / 0.6 - 1e-4 <= kept["low"] < kept["mean"] < kept["high"] <= 0.7 / 0.8 + 1e-4
    assert kept["goal"] == 0.97 and kept["goal_reached"] == "no"
    assert shipped["hd95_ratio_to_teacher"]["mean"] == pytest.approx(2.0) and \
        shipped["hd95_ratio_to_teacher"]["goal_reached"] == "no"  # fmt: skip
    assert entry["variants"]["gt"]["retention_of_teacher"] is None and entry["variants"]["gt"]["minus_gt"] is None
    assert summary["latency"] == {"teacher_seconds": 110.0, "teacher_no_tta_seconds": 13.0,
                                  "machines": ['{"cpu": "x86_64", "cpu_count": 2}'], "busiest_load_average": 2.5}
    assert shipped["seconds_per_case"] == pytest.approx(1.1) and shipped["speedup_over_teacher"] == pytest.approx(100.0)
    assert shipped["teacher_agreement"] == pytest.approx(0.9)


def test_the_conclusion_says_what_the_intervals_say(final, records, tmp_path):
    summary = final.summarise(records, [100_000], ["gt", "recipe_dice_kl"], [0, 1], "recipe_dice_kl")
    (sentence,) = summary["conclusion"]
    kept = summary["sizes"]["100000"]["variants"]["recipe_dice_kl"]["retention_of_teacher"]
    assert f"keeps 78.6% [{kept['low']:.1%}, {kept['high']:.1%}]" in sentence and "misses the 97% goal" in sentence
    assert "not distinguishable from the label-only student (+0.050" in sentence and "100x faster" in sentence
    final.write_summary(summary, tmp_path)
    report = (tmp_path / "FINAL.md").read_text()
    assert "| 100k recipe_dice_kl | 0.550 | 0.550 |" in report and "| threshold baseline | 0.300 |" in report
    assert "| 100k recipe_dice_kl (onnxruntime) | 99,000 | 400 KiB | 1.10 | 0.55 | 100x |" in report
    assert "| teacher, no mirroring (5 passes) | - | - | 13.0 | - | 8.5x |" in report
    assert "Every row timed on one machine (x86_64, 2 cores; highest 1-minute load average as a timed stage " \
        "began: 2.5)." in report  # fmt: skip
    assert "faster than the 40-pass teacher and 12x faster than its 5-pass version" in sentence


def test_a_summary_without_the_shipped_variant_concludes_nothing(final, records):
    summary = final.summarise(records, [100_000], ["gt"], [0, 1], "recipe_dice_kl")
    assert summary["conclusion"] == [] and list(summary["sizes"]["100000"]["variants"]) == ["gt"]


def test_the_shipped_variant_and_the_baseline_must_be_trained(final):
    with pytest.raises(SystemExit):
        final.parse_args(["--data", "x", "--variants", "gt", "--ship", "recipe_dice_kl"])
    with pytest.raises(SystemExit):
        final.parse_args(["--data", "x", "--variants", "recipe_dice_kl"])
    with pytest.raises(SystemExit):  # a label-only student has no retention to report
        final.parse_args(["--data", "x", "--variants", "gt", "--ship", "gt"])
    assert final.parse_args(["--data", "x"]).ship == "recipe_dice_kl"


def test_a_committed_ensemble_record_without_its_label_maps_runs_again(final, tmp_path):
    args = final.parse_args(["--data", "x", "--work", str(tmp_path), "--records", str(tmp_path / "records")])
    pipeline = final.FinalPipeline(args=args, work=tmp_path)
    outputs = pipeline.local_outputs(f"final_{final.TEACHER}")
    assert sorted(path.name for path in outputs) == sorted(f"{case}.nii.gz" for case in final.rr.TEST_CASES)
    assert len(pipeline.local_outputs("final_teacher")) == 5 and pipeline.local_outputs("final_cache") == []


def test_a_mirrored_twin_is_reported_beside_the_one_pass_and_paired_with_the_one_pass_baseline(final, records):
    for seed, dice in ((0, {"a": 0.65, "b": 0.45}), (1, {"a": 0.75, "b": 0.55})):  # +0.05 everywhere
        record = records.records[final.student_stage(100_000, "recipe_dice_kl", seed)]
        record["mirror8"] = {key: value for key, value in student(dice, 3.0, {"a": 8.0, "b": 8.0}).items()
                             if key in ("vs_ground_truth", "vs_teacher", "seconds_per_case")}  # fmt: skip
    summary = final.summarise(records, [100_000], ["gt", "recipe_dice_kl"], [0, 1], "recipe_dice_kl")
    variants = summary["sizes"]["100000"]["variants"]
    assert list(variants) == ["gt", "recipe_dice_kl", "recipe_dice_kl+mirror8"]  # gt has no mirrored records
    twin = variants["recipe_dice_kl+mirror8"]
    assert twin["mean_dice"] == pytest.approx(0.60) and twin["minus_gt"]["mean"] == pytest.approx(0.10)
    assert twin["parameters"] == 99_000 and twin["seconds_per_case"] == pytest.approx(8.0)
    assert twin["speedup_over_teacher"] == pytest.approx(13.8)  # 110 / 8, rounded to 0.1
    assert twin["retention_of_teacher"]["mean"] == pytest.approx(0.6 / 0.7, abs=1e-4)
    assert len(summary["conclusion"]) == 1  # about the shipped one-pass student


def test_latency_from_two_machines_is_not_called_side_by_side(final):
    text = final.latency_provenance({"machines": ['{"cpu": "a", "cpu_count": 2}', '{"cpu": "b", "cpu_count": 16}'],
                                     "busiest_load_average": None})  # fmt: skip
    assert text == "Timed on 2 different machines (a, 2 cores; b, 16 cores): ratios across them are not side by side."
    assert final.latency_provenance({}) == "Where these were timed is not recorded."
