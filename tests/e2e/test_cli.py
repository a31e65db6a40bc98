"""The `distill` command line as a user runs it: real processes, real files."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from distill.data.nifti import read_nifti, write_nifti


def run_cli(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "distill", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("data", "evaluate", "demo"):
        assert command in result.stdout


def test_bad_input_is_one_clear_line_and_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("data", "convert", tmp_path / "empty", tmp_path / "raw")
    assert result.returncode == 2
    assert "no BraTS cases found" in result.stderr and str(tmp_path / "empty") in result.stderr.replace("\n", "")
    assert "Traceback" not in result.stderr


def test_phantoms_convert_and_evaluate_across_conventions(tmp_path):
    """GT in nnU-Net numbering (converted) vs the phantoms' own BraTS 2021 labels: a perfect match."""
    assert run_cli("data", "phantoms", tmp_path / "ph", "-n", "2", "--spacing", "3").returncode == 0
    converted = run_cli("data", "convert", tmp_path / "ph", tmp_path / "raw", "-d", "42", "--name", "Ph")
    assert converted.returncode == 0, converted.stderr
    dataset = tmp_path / "raw" / "Dataset042_Ph"
    # predictions = the phantoms' own seg files, flattened to <case>.nii.gz (BraTS 2017-21 labels)
    for seg in sorted((tmp_path / "ph").glob("*/*_seg.nii.gz")):
        volume = read_nifti(seg)
        write_nifti(tmp_path / "pred" / seg.name.replace("_seg", ""), volume.data, volume.affine)
    result = run_cli(
        "evaluate", tmp_path / "pred", dataset, "--out", tmp_path / "eval", "--pred-convention", "brats2017"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n_cases"] == 2
    with open(tmp_path / "eval" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and {r["region"] for r in rows} == {"WT", "TC", "ET"}
    assert all(float(r["dice"]) == 1.0 and float(r["hd95"]) == 0.0 for r in rows)


def test_evaluate_refuses_a_prediction_on_another_grid(tmp_path):
    assert run_cli("data", "phantoms", tmp_path / "ph", "-n", "1", "--spacing", "4").returncode == 0
    seg = next((tmp_path / "ph").glob("*/*_seg.nii.gz"))
    volume = read_nifti(seg)
    write_nifti(tmp_path / "pred" / seg.name.replace("_seg", ""), volume.data[:-1], volume.affine)
    result = run_cli("evaluate", tmp_path / "pred", tmp_path / "ph")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert seg.name.replace("_seg", "") in result.stderr.replace("\n", "")


STAGES = ("data", "teacher", "teacher_cache", "student", "export", "serve", "predict", "evaluate")


@pytest.mark.slow
@pytest.mark.nnunet
def test_demo_quick_runs_every_stage_and_a_rerun_reuses_them(tmp_path):
    """`distill demo --quick`: data -> nnU-Net teacher -> cache -> student -> ONNX package -> HTTP
    service -> predict -> evaluate -> report, a line per stage; a rerun retrains nothing."""
    demo = tmp_path / "demo"
    result = run_cli("demo", "--quick", "--out", demo, timeout=1800)  # ~4 min on 2 idle cores
    assert result.returncode == 0, result.stderr[-3000:]
    for model in ("teacher: nnU-Net 5x8 TTA", "student (onnxruntime)", "threshold baseline"):
        assert model in result.stdout
    lines = " ".join(result.stderr.split())  # the stage lines, unwrapped
    for number, stage in enumerate(("data", "teacher", "teacher-cache", "train-student", "export", "serve",
                                    "predict", "evaluate", "report"), start=1):  # fmt: skip
        assert f"{number}. {stage}" in lines, f"no line for stage {number} ({stage})"
    assert (demo / "package" / "model.onnx").is_file() and (demo / "cache" / "manifest.json").is_file()
    records = {s: json.loads((demo / "stages" / f"{s}.json").read_text()) for s in STAGES}
    served = records["serve"]
    assert served["status"] == 200 and served["clean_shutdown"] and served["shape"] == [48, 48, 32]
    assert 80_000 < records["student"]["parameters"] < 120_000 and records["student"]["recipe"] == "brats-100k"
    assert records["export"]["parity_passed"]
    # the student carries the distilled-uncertainty head; its map of the report case is stored
    # as the teacher's spread is, and the report draws it beside the teacher's
    with np.load(records["predict"]["report_case"]["student_uncertainty"]) as stored:
        distilled = stored["uncertainty"]
    assert distilled.shape == (3, 48, 48, 32) and 0 <= distilled.min() and distilled.max() <= 0.5
    assert "uncertainty head" in (demo / "report.md").read_text()
    summaries = {
        m: json.loads((demo / "evaluation" / m / "summary.json").read_text())
        for m in ("teacher", "student", "threshold")
    }
    assert all(s["n_cases"] == 1 for s in summaries.values())
    page = (demo / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "src=\"http" not in page
    assert (demo / "report.md").is_file() and len(list((demo / "report_files").glob("*.png"))) == 3

    again = run_cli("demo", "--quick", "--out", demo)  # every stage resumes: nothing retrained, same scores
    assert again.returncode == 0, again.stderr[-3000:]
    assert " ".join(again.stderr.split()).count("reused from an earlier run") == len(STAGES)
    for stage in STAGES:
        assert json.loads((demo / "stages" / f"{stage}.json").read_text()) == records[stage]
    student_again = json.loads((demo / "evaluation" / "student" / "summary.json").read_text())
    assert student_again["per_region"] == summaries["student"]["per_region"]
