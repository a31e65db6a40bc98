"""benchmarks/uncertainty/measure.py end to end on tiny inputs: the files it writes and that every number is in range.

Two untrained students of ~6k parameters (distill.train.chain.save_untrained_student), one with
the uncertainty head and one without, exported and measured on two seeded synthetic cases
(tests/conftest.py's stub cases, 32x32x24, oblique affines) against the spread of its
StubTeacher, put in place of the nnU-Net teacher (whose own path
tests/integration/test_nnunet_teacher.py covers). Whether the numbers are good does not matter
here, only that the measurement runs, resumes, refuses stale records and stays in range.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import StubTeacher, make_oblique_affine, stub_case, write_brats_case
from script_module import script_module

from distill.export.run import ExportConfig, export_package
from distill.train.chain import save_untrained_student

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "uncertainty" / "measure.py"


@pytest.fixture(scope="module")
def measure():
    with script_module(SCRIPT, "uncertainty_measure") as module:
        yield module


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("uncertainty_measure")
    for seed in range(2):
        images, labels = stub_case(seed)
        write_brats_case(work / "cases", f"Stub_{seed:03d}", images, labels, make_oblique_affine(4.0 + 3.0 * seed))
    packages = {}
    for name, head in (("head", True), ("plain", False)):
        save_untrained_student(work / f"run_{name}", 6000, seed=1, uncertainty_head=head)
        packages[name] = export_package(ExportConfig(run_dir=work / f"run_{name}", out=work / f"pkg_{name}",
                                                     held_out=work / "cases", max_held_out=1)).package_dir  # fmt: skip
    records = work / "records"
    records.mkdir()
    for variant, dice in (("recipe_uncertainty", 0.6), ("recipe", 0.5)):
        per_case = {c: {r: {"dice": dice, "hd95": 1.0} for r in ("WT", "TC", "ET")} for c in ("a", "b")}
        (records / f"protocol_fold0_30k_{variant}_seed0.json").write_text(
            json.dumps({"vs_ground_truth": {"per_case": per_case}}))
    return {"work": work, **packages, "cases": work / "cases", "records": records}


def arguments(inputs, *pair_packages) -> list[str]:
    return ["--out", str(inputs["work"] / "out"), "--group", "fold0", "--cases", str(inputs["cases"]),
            "--teacher-model", str(inputs["work"] / "no-model"), "--teacher-folds", "0",
            "--pair", "6k:0", *map(str, pair_packages), "--latency-repeats", "2", "--threads", "2",
            "--protocol-records", str(inputs["records"]), "--protocol-folds", "0", "1"]  # fmt: skip


def strings(value):
    """Every string in a JSON document (keys and values)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield from value.split()


def in_range(value, low, high) -> bool:
    return value is None or (low <= value <= high and math.isfinite(value))


def test_measure_writes_records_and_a_summary_in_range(measure, inputs, monkeypatch):
    built = []
    monkeypatch.setattr(measure, "build_teacher", lambda *args: built.append(args) or StubTeacher())
    assert measure.main(arguments(inputs, inputs["head"], inputs["plain"])) == 0
    out = inputs["work"] / "out"
    records = sorted((out / "cases" / "fold0" / "6k_seed0").glob("*.json"))
    assert len(records) == 2 and len(built) == 1  # one teacher for both cases
    for path in records:
        record = json.loads(path.read_text())
        assert record["teacher_passes"] == 2 and record["brain_voxels"] > 0
        assert record["head"]["uncertainty"] and not record["no_head"]["uncertainty"]
        for region in ("WT", "TC", "ET"):
            r = record["regions"][region]
            assert 0 <= r["error_fraction"] <= 1
            assert in_range(r["dice_head"], 0, 1) and in_range(r["dice_no_head"], 0, 1)
            assert all(in_range(v, -1, 1) for v in r["spearman_vs_teacher"].values())
            assert all(in_range(r[k][m], 0, 1) for k in ("auroc", "capture") for m in ("head", "entropy", "teacher"))
    latency = json.loads((out / "latency" / "fold0" / "6k_seed0.json").read_text())
    assert set(latency["medians"]) == {"head_with_map", "head_labels_only", "no_head"}
    assert all(len(t["total_s"]) == 2 for t in latency["timings"].values())
    assert all(v > 0 for v in latency["ratios"].values())

    summary = json.loads((out / "results.json").read_text())
    method = summary["methods"]["6k"]
    assert method["seeds"] == [0] and len(method["cases"]) == 2
    for region in ("WT", "TC", "ET"):
        r = method["regions"][region]
        for m in ("head", "entropy"):
            s = r["spearman_vs_teacher"][m]
            assert s["n_cases"] + s["undefined_cases"] == 2 and in_range(s["mean"], -1, 1)
        assert all(in_range(r["auroc"][m]["median"], 0, 1) for m in ("head", "entropy", "teacher"))
    assert set(method["dice"]["head_minus_no_head"]) == {"WT", "TC", "ET", "mean"}
    assert method["latency"]["median_ratios"]["head_with_map_over_no_head_total"] > 0
    (protocol,) = summary["protocol_dice"]
    assert protocol["folds_used"] == [0] and protocol["missing"] == [
        "protocol_fold1_30k_recipe_uncertainty_seed0.json", "protocol_fold1_30k_recipe_seed0.json"]
    assert protocol["mean_dice"]["head_minus_base"]["mean"] == pytest.approx(0.1) and protocol["mean_dice"]["not_worse"]

    text = (out / "RESULTS.md").read_text()
    assert text.count("python benchmarks/uncertainty/measure.py --out ") == 1 and "| WT | distilled head |" in text
    command = summary["commands"]["fold0"]["command"]
    assert "--pair 6k:0 " in command and "--teacher-folds 0" in command
    # nothing written names an absolute machine path
    for path in out.rglob("*.json"):
        assert not [v for v in strings(json.loads(path.read_text())) if v.startswith("/")], path
    assert not [word for word in text.split() if word.strip("`(").startswith("/") and word != "/"]

    # a rerun measures nothing again: no teacher is built, no record rewritten
    stamps = {p: p.stat().st_mtime_ns for p in records}
    monkeypatch.setattr(measure, "build_teacher", lambda *args: pytest.fail("the teacher ran again"))
    assert measure.main(arguments(inputs, inputs["head"], inputs["plain"])) == 0
    assert {p: p.stat().st_mtime_ns for p in records} == stamps

    # records of another pairing are refused, not mixed in
    with pytest.raises(SystemExit, match="made with other no_head"):
        measure.main(arguments(inputs, inputs["head"]))
