"""The `distill` command line as a user runs it: real processes, real files."""

import csv
import json
import subprocess
import sys

import pytest

from distill.data.nifti import read_nifti, write_nifti


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "distill", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
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


@pytest.mark.slow
@pytest.mark.nnunet
def test_demo_runs_the_whole_pipeline(tmp_path):
    """nnU-Net teacher -> cache -> student -> ONNX package -> predict -> evaluate, at a tiny budget."""
    args = ["demo", "--out", tmp_path / "demo", "-n", "5", "--n-test", "1", "--teacher-iterations", "1",
            "--steps", "4", "--params", "6000"]  # fmt: skip
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    for model in ("teacher: nnU-Net 5x8 TTA", "student (onnxruntime)", "threshold baseline"):
        assert model in result.stdout
    demo = tmp_path / "demo"
    assert (demo / "package" / "model.onnx").is_file() and (demo / "cache" / "manifest.json").is_file()
    summaries = {
        m: json.loads((demo / "evaluation" / m / "summary.json").read_text())
        for m in ("teacher", "student", "threshold")
    }
    assert all(s["n_cases"] == 1 for s in summaries.values())
    again = run_cli(*args)  # every stage resumes: nothing retrained, same scores
    assert again.returncode == 0, again.stderr[-3000:]
    student_again = json.loads((demo / "evaluation" / "student" / "summary.json").read_text())
    assert student_again["per_region"] == summaries["student"]["per_region"]
