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


def scores(per_case: dict[str, float], hd95: float = 1.0, agreement: dict[str, float] | None = None) -> dict:
    """A stage record whose three regions all have the given Dice (and HD95) per case; its
    agreement with the teacher is ``agreement`` per case (the expert Dice when not given)."""

    def side(dice):
        return {"per_case": {case: {r: {"dice": d, "hd95": hd95} for r in ("WT", "TC", "ET")}
                             for case, d in dice.items()}}  # fmt: skip

    return {"vs_ground_truth": side(per_case), "vs_teacher": side(agreement or per_case)}


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
    summary = protocol.summarise(Records(records), [0, 1], {30_000: ["gt", "recipe"]}, [0, 1])
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
    summary = protocol.summarise(Records(records), [0], {100_000: ["gt", "recipe"]}, [0])
    protocol.write_summary(summary, tmp_path)
    table = (tmp_path / "SUMMARY.md").read_text()
    assert "| gt | 0 | 0.500 |" in table and "| recipe | 0 | 0.780 |" in table and "(goal 97%:" in table


def test_students_are_scored_at_half_and_the_old_calibration_is_paired_with_its_twin(protocol):
    # fold 0's recipe student was calibrated (0.9 on WT) and scores 0.6; its 0.5 twin scores 0.55
    # / 0.45. Fold 1's was trained without calibration (thresholds None): its own record is at 0.5.
    records = {"protocol_fold0_teacher": scores({"a": 0.8, "b": 0.6}), "protocol_fold1_teacher": scores({"c": 0.7})}
    records[protocol.student_stage(0, 30_000, "gt", 0)] = scores({"a": 0.5, "b": 0.5})
    records[protocol.student_stage(1, 30_000, "gt", 0)] = scores({"c": 0.5})
    calibrated = {**scores({"a": 0.6, "b": 0.6}), "thresholds": {"WT": 0.9, "TC": 0.5, "ET": 0.5}}
    records[protocol.student_stage(0, 30_000, "recipe", 0)] = calibrated
    records[protocol.default_thresholds_stage(0, 30_000, "recipe", 0)] = scores({"a": 0.55, "b": 0.45})
    records[protocol.student_stage(1, 30_000, "recipe", 0)] = {**scores({"c": 0.8}), "thresholds": None}
    assert protocol.calibrated(calibrated) and not protocol.calibrated(records[protocol.student_stage(1, 30_000,
                                                                                                  "recipe", 0)])
    summary = protocol.summarise(Records(records), [0, 1], {30_000: ["gt", "recipe"]}, [0])
    recipe = summary["sizes"]["30000"]["variants"]["recipe"]
    assert recipe["mean_dice"] == pytest.approx((0.55 + 0.45 + 0.8) / 3, abs=1e-4)  # at 0.5 on every fold
    assert recipe["minus_gt"]["mean"] == pytest.approx((0.05 - 0.05 + 0.3) / 3, abs=1e-4)
    effect = recipe["calibrated_minus_default"]  # only fold 0 was calibrated: (0.6-0.55 + 0.6-0.45) / 2
    assert effect["folds"] == [0] and effect["n_cases"] == 2 and effect["mean"] == pytest.approx(0.1, abs=1e-4)
    assert summary["sizes"]["30000"]["variants"]["gt"]["calibrated_minus_default"] is None  # gt never calibrated


def test_the_scope_counts_whole_folds_and_variants_per_size_and_skips_a_missing_twin(protocol):
    # fold 0 is complete for gt and recipe at both sizes and seeds; recipe_uncertainty exists at
    # 30k only (both seeds); kd_plain has seed 0 only at 100k (it enters with that seed) and
    # seed 1 only at 30k (it does not: a lone seed must be the first); fold 1 has a teacher but
    # no 100k students, so it is left out.
    records = {"protocol_fold0_teacher": scores({"a": 0.8}), "protocol_fold1_teacher": scores({"c": 0.7})}
    for seed in (0, 1):
        for size in (100_000, 30_000):
            for variant in ("gt", "recipe"):
                records[protocol.student_stage(0, size, variant, seed)] = scores({"a": 0.5})
            records[protocol.student_stage(1, 30_000, "gt", seed)] = scores({"c": 0.5})
        records[protocol.student_stage(0, 30_000, "recipe_uncertainty", seed)] = scores({"a": 0.5})
    records[protocol.student_stage(0, 100_000, "kd_plain", 0)] = scores({"a": 0.5})
    records[protocol.student_stage(0, 30_000, "kd_plain", 1)] = scores({"a": 0.5})
    folds, variants = protocol.summary_scope(Records(records))
    assert folds == [0]
    assert variants == {100_000: {"gt": (0, 1), "kd_plain": (0,), "recipe": (0, 1)},
                        30_000: {"gt": (0, 1), "recipe": (0, 1), "recipe_uncertainty": (0, 1)}}
    # a calibrated student whose 0.5 twin is not on record leaves the table, not the run
    stage = protocol.student_stage(0, 100_000, "recipe", 1)
    records[stage] = {**scores({"a": 0.5}), "thresholds": {"WT": 0.9, "TC": 0.5, "ET": 0.5}}
    assert protocol.summary_scope(Records(records))[1][100_000] == {"gt": (0, 1), "kd_plain": (0,), "recipe": (0,)}
    with pytest.raises(LookupError, match=protocol.default_thresholds_stage(0, 100_000, "recipe", 1)):
        protocol.at_half(Records(records), 0, 100_000, "recipe", 1)


def test_a_committed_record_without_its_work_files_runs_again(protocol, tmp_path):
    import argparse
    import json

    records = tmp_path / "records"
    records.mkdir()
    (records / "convert.json").write_text(json.dumps({"dataset_dir": "nnunet_raw/x", "seconds": 9.0}))
    calls = []
    pipeline = protocol.ProtocolPipeline(args=argparse.Namespace(records=records), work=tmp_path / "work")
    record = pipeline.run("convert", lambda: calls.append(1) or {"dataset_dir": "again"})
    assert calls == [1] and record["dataset_dir"] == "again"  # a fresh clone: the converted data is missing
    # the rerun only regenerates files: the committed measurement is left as it was
    assert json.loads((records / "convert.json").read_text()) == {"dataset_dir": "nnunet_raw/x", "seconds": 9.0}
    # once the work folder holds the dataset, the committed record is enough
    fresh = protocol.ProtocolPipeline(args=argparse.Namespace(records=records), work=tmp_path / "other")
    dataset = tmp_path / "other" / "nnunet_raw" / f"Dataset{protocol.rr.DATASET_ID:03d}_{protocol.rr.DATASET_NAME}"
    dataset.mkdir(parents=True)
    (dataset / "dataset.json").write_text("{}")
    assert fresh.run("convert", lambda: calls.append(2) or {}) == {"dataset_dir": "nnunet_raw/x", "seconds": 9.0}
    assert calls == [1]
    # a student is read through its record alone
    (records / "protocol_fold0_30k_gt_seed0.json").write_text(json.dumps({"fold": 0}))
    assert fresh.run("protocol_fold0_30k_gt_seed0", lambda: calls.append(3) or {}) == {"fold": 0}


def test_each_ladder_step_is_paired_with_its_reference_on_the_seeds_both_have(protocol, tmp_path):
    # one fold, cases a and b. gt 0.5; kd_plain 0.6; recipe 0.7 (seed 0) / 0.8 (seed 1);
    # recipe_chain 0.75 on seed 0 only: the chain step pairs with the recipe's seed 0 alone (+0.05).
    records = {"protocol_fold0_teacher": scores({"a": 0.8, "b": 0.8})}
    for seed, recipe in ((0, 0.7), (1, 0.8)):
        for variant, value in (("gt", 0.5), ("kd_plain", 0.6), ("recipe", recipe)):
            records[protocol.student_stage(0, 30_000, variant, seed)] = scores({"a": value, "b": value})
        records[protocol.student_stage(0, 100_000, "gt", seed)] = scores({"a": 0.5, "b": 0.5})  # the fold counts
    records[protocol.student_stage(0, 30_000, "recipe_chain", 0)] = scores({"a": 0.75, "b": 0.75})
    # an ablation's step reads as what the removed remedy adds: recipe (seed 0) minus it
    records[protocol.student_stage(0, 30_000, "recipe_no_adjust", 0)] = scores({"a": 0.65, "b": 0.65})
    folds, variants = protocol.summary_scope(Records(records))
    assert folds == [0]
    summary = protocol.summarise(Records(records), folds, {30_000: variants[30_000]}, protocol.SUMMARY_SEEDS)
    table = summary["sizes"]["30000"]["variants"]
    assert table["recipe"]["minus_reference"]["reference"] == "kd_plain"
    assert table["recipe"]["minus_reference"]["mean"] == pytest.approx(0.15, abs=1e-4)
    chain = table["recipe_chain"]
    assert chain["seeds"] == [0] and chain["minus_reference"]["n_seeds"] == 1
    assert chain["minus_reference"]["mean"] == pytest.approx(0.05, abs=1e-4)
    assert chain["minus_gt"]["mean"] == pytest.approx(0.25, abs=1e-4)
    assert table["kd_plain"]["minus_reference"] is None  # its reference is the label-only column
    ablation = table["recipe_no_adjust"]["minus_reference"]
    assert (ablation["minuend"], ablation["reference"]) == ("recipe", "recipe_no_adjust")
    assert ablation["mean"] == pytest.approx(0.05, abs=1e-4)
    summary["not_yet"] = protocol.not_yet_covered(Records(records), folds, {30_000: variants[30_000]})
    assert summary["not_yet"] == {}
    protocol.write_summary(summary, tmp_path)
    table_md = (tmp_path / "SUMMARY.md").read_text()
    assert "| recipe_chain | 0 | 0.750 |" in table_md
    assert "+0.050 [+0.050, +0.050] on seed 0 (recipe_chain minus recipe)" in table_md
    # a variant recorded on another fold only is named under the table with what it lacks
    records[protocol.student_stage(3, 30_000, "recipe_voxel", 0)] = scores({"z": 0.5})
    assert protocol.not_yet_covered(Records(records), folds, {30_000: variants[30_000]}) == {
        "30000": ["recipe_voxel (lacks fold 0)"]}


def test_the_threshold_floor_pairs_with_teacher_and_label_only_students(protocol, tmp_path):
    # teacher 0.8 / 0.6, label-only 0.5 everywhere, threshold 0.3 / 0.5: the floor is 0.4, the
    # teacher is +0.3 above it and the label-only student +0.1; without a floor record none is shown.
    records = {"protocol_fold0_teacher": scores({"a": 0.8, "b": 0.6})}
    for seed in (0, 1):
        records[protocol.student_stage(0, 30_000, "gt", seed)] = scores({"a": 0.5, "b": 0.5})
    assert "threshold" not in protocol.summarise(Records(records), [0], {30_000: ["gt"]}, [0, 1])
    records["protocol_fold0_threshold"] = scores({"a": 0.3, "b": 0.5})
    summary = protocol.summarise(Records(records), [0], {30_000: ["gt"]}, [0, 1])
    assert summary["threshold"]["mean_dice"] == pytest.approx(0.4) and summary["threshold"]["ET_dice"] == 0.4
    assert summary["threshold"]["teacher_minus_threshold"]["mean"] == pytest.approx(0.3, abs=1e-4)
    assert summary["sizes"]["30000"]["gt_minus_threshold"]["mean"] == pytest.approx(0.1, abs=1e-4)
    protocol.write_summary(summary, tmp_path)
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "threshold baseline (the floor): mean Dice 0.400" in text and "minus threshold +0.100" in text


def test_hd95_is_read_as_a_multiple_of_the_teachers_and_agreement_against_the_teacher(protocol):
    # one fold, cases a and b; teacher HD95 4 mm, the KD student's 6 mm (1.5x: the goal of 1.2x
    # is missed on every resample), the label-only student's 4 mm. Agreement with the teacher:
    # KD 0.9 on both cases, label-only 0.7, so KD agrees +0.2 more.
    records = {"protocol_fold0_teacher": scores({"a": 0.8, "b": 0.8}, hd95=4.0)}
    for seed in (0, 1):
        records[protocol.student_stage(0, 30_000, "gt", seed)] = scores({"a": 0.6, "b": 0.6}, hd95=4.0,
                                                                         agreement={"a": 0.7, "b": 0.7})
        records[protocol.student_stage(0, 30_000, "recipe", seed)] = scores({"a": 0.6, "b": 0.6}, hd95=6.0,
                                                                             agreement={"a": 0.9, "b": 0.9})
    summary = protocol.summarise(Records(records), [0], {30_000: ["gt", "recipe"]}, [0, 1])
    assert summary["teacher"]["mean_hd95"] == 4.0 and summary["teacher"]["ET_hd95"] == 4.0
    recipe = summary["sizes"]["30000"]["variants"]["recipe"]
    assert recipe["mean_hd95"] == 6.0 and recipe["WT_hd95"] == 6.0
    ratio = recipe["hd95_ratio_to_teacher"]
    assert ratio["mean"] == pytest.approx(1.5) and ratio["goal"] == 1.2 and ratio["goal_reached"] == "no"
    assert summary["sizes"]["30000"]["variants"]["gt"]["hd95_ratio_to_teacher"]["goal_reached"] == "yes"
    assert recipe["teacher_agreement"] == pytest.approx(0.9)
    assert recipe["agreement_minus_gt"]["mean"] == pytest.approx(0.2, abs=1e-9)


def test_postprocessing_pairs_each_case_with_its_students_unprocessed(protocol):
    # one fold, cases a and b, two students with post-processing records: keeping the largest
    # components adds +0.1 on a and nothing on b for each, so the choice is +0.05 over two cases;
    # a third student without a _post record is left out of the comparison.
    records = {"protocol_fold0_teacher": scores({"a": 0.8, "b": 0.8})}
    for seed in (0, 1):
        records[protocol.student_stage(0, 30_000, "gt", seed)] = scores({"a": 0.5, "b": 0.6}, hd95=50.0)
        cleaned = scores({"a": 0.6, "b": 0.6}, hd95=5.0)
        records[protocol.postprocessed_stage(protocol.student_stage(0, 30_000, "gt", seed))] = {
            "scored": {"none": scores({"a": 0.5, "b": 0.6}, hd95=50.0),
                       **{choice: cleaned for choice in protocol.POSTPROCESSING}}}  # fmt: skip
    records[protocol.student_stage(0, 30_000, "recipe", 0)] = scores({"a": 0.1, "b": 0.1})
    # the pairing uses the unprocessed predictions the _post record scored ("none"), not the stage
    # record (made different here on purpose); a _post record lacking a candidate is left out
    records[protocol.student_stage(0, 30_000, "gt", 1)] = scores({"a": 0.0, "b": 0.0}, hd95=50.0)
    records[protocol.student_stage(0, 30_000, "recipe", 1)] = scores({"a": 0.1, "b": 0.1})
    records[protocol.postprocessed_stage(protocol.student_stage(0, 30_000, "recipe", 1))] = {
        "scored": {"none": scores({"a": 0.1, "b": 0.1}), "largest_wt": scores({"a": 0.9, "b": 0.9})}}
    post = protocol.summarise_postprocessing(Records(records), [0], {30_000: ["gt", "recipe"]}, [0, 1])
    entry = post["sizes"]["30000"]
    assert entry["students"] == 2
    largest = entry["choices"]["largest_wt"]
    assert largest["minus_none"]["mean"] == pytest.approx(0.05) and largest["cases"] == 2
    assert largest["none_mean_dice"] == pytest.approx(0.55) and largest["mean_hd95"] == 5.0
    assert post["teacher"] == {}  # the teacher's predictions were not post-processed here
    assert any("largest_wt" in line for line in protocol.postprocessing_lines(post))


def test_a_pilot_is_paired_on_its_own_folds_with_what_it_should_beat(protocol, tmp_path):
    # two counted folds (a, b | c); dice_kl_live trained on fold 0 only, with its comparisons there:
    # gt 0.5, gt_strong 0.55, dice_kl_strong 0.6, recipe_dice_kl 0.52; the pilot 0.7 on a, 0.6 on b
    records = {"protocol_fold0_teacher": scores({"a": 0.8, "b": 0.6}), "protocol_fold1_teacher": scores({"c": 0.7})}
    for fold, cases in ((0, ("a", "b")), (1, ("c",))):
        records[protocol.student_stage(fold, 30_000, "gt", 0)] = scores(dict.fromkeys(cases, 0.5))
    for variant, value in (("gt_strong", 0.55), ("dice_kl_strong", 0.6), ("recipe_dice_kl", 0.52)):
        records[protocol.student_stage(0, 30_000, variant, 0)] = scores({"a": value, "b": value})
    records[protocol.student_stage(0, 30_000, "dice_kl_live", 0)] = scores({"a": 0.7, "b": 0.6})
    # a comparison missing on the pilot's fold is left out, not a reason to drop the pilot
    records[protocol.student_stage(1, 30_000, "dice_kl_live_light", 0)] = scores({"c": 0.5})
    p = Records(records)
    pilots = protocol.pilot_scope(p, [0, 1], {30_000: {"gt": (0,)}})
    live = next(x for x in pilots if x["variant"] == "dice_kl_live")
    # its ladder reference (dice_kl_strong) and PILOT_COMPARISONS come after the label-only student
    assert live["folds"] == [0] and live["compared_with"] == ["gt", "dice_kl_strong", "gt_strong", "recipe_dice_kl"]
    # dice_kl_strong's own pilot needs gt_strong (its reference) and recipe_dice_kl: both on fold 0;
    # recipe_dice_kl is no pilot: its reference, the region recipe, was not trained
    assert {x["variant"] for x in pilots} == {"dice_kl_live", "dice_kl_strong", "gt_strong"}
    (row,) = [r for r in protocol.summarise_pilots(p, [live])]
    assert row["cases"] == 2 and row["mean_dice"] == pytest.approx(0.65)
    assert row["minus"]["gt"]["mean"] == pytest.approx(0.15, abs=1e-4)
    assert row["minus"]["dice_kl_strong"]["mean"] == pytest.approx(0.05, abs=1e-4)
    assert row["minus"]["gt_strong"]["mean"] == pytest.approx(0.10, abs=1e-4)
    assert row["minus"]["gt_strong"]["n_cases"] == 2 and "dice_kl_live_light" not in row["minus"]
    assert row["retention_of_teacher"]["mean"] == pytest.approx(0.65 / 0.7, abs=1e-4)
    protocol.write_summary({**protocol.summarise(p, [0, 1], {30_000: ["gt"]}, [0]), "pilots": [row]}, tmp_path)
    table = (tmp_path / "SUMMARY.md").read_text()
    assert "## Pilots: fewer folds, one seed" in table
    assert "| 30k | dice_kl_live | [0] (2) | 0.650 |" in table and "gt_strong: +0.100" in table


def test_mirroring_is_paired_with_the_same_networks_one_pass(protocol, tmp_path):
    # fold 3 holds cases a, b: one pass 0.5 / 0.6 on both seeds, mirrored 0.55 / 0.62 (+0.05, +0.02);
    # fold 0 has no mirrored records (its packages were lost) and stays out
    records = {}
    for seed in (0, 1):
        stage = protocol.student_stage(3, 100_000, "gt", seed)
        records[stage] = scores({"a": 0.5, "b": 0.6}, hd95=4.0)
        records[protocol.mirrored_stage(stage)] = scores({"a": 0.55, "b": 0.62}, hd95=3.0)
        records[protocol.student_stage(0, 100_000, "gt", seed)] = scores({"c": 0.4})
    mirroring = protocol.summarise_mirroring(Records(records), {100_000: ["gt", "recipe"]}, (0, 1))
    entry = mirroring["100000"]["gt"]
    assert list(mirroring["100000"]) == ["gt"] and entry["folds"] == [3]
    assert entry["minus_none"]["mean"] == pytest.approx(0.035) and entry["minus_none"]["n_cases"] == 2
    assert entry["none_mean_dice"] == pytest.approx(0.55) and entry["mean_hd95"] == pytest.approx(3.0)
    lines = protocol.mirroring_lines(mirroring)
    assert "| 100k | gt | [3] | 0.585 (0.550) | +0.035 [" in "\n".join(lines)
    assert protocol.mirroring_lines({}) == []
