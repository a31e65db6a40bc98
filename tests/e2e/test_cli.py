"""The `distill` command line as a user runs it: real processes, real files."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from distill.data.nifti import read_nifti, write_nifti


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "distill", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


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
    result = run_cli("evaluate", tmp_path / "pred", dataset, "--out", tmp_path / "eval", "--pred-convention", "brats2017")
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
def test_demo_runs_end_to_end(tmp_path):
    result = run_cli("demo", "--out", tmp_path / "demo", "-n", "3")
    assert result.returncode == 0, result.stderr
    assert "WT" in result.stdout and "ET" in result.stdout
    summary = json.loads((tmp_path / "demo" / "evaluation" / "summary.json").read_text())
    assert summary["n_cases"] == 3
    assert (tmp_path / "demo" / "nnUNet_raw" / "Dataset990_DistillDemo" / "dataset.json").is_file()
    # The threshold baseline must find the tumours at least roughly (it is a floor, not a target).
    assert summary["per_region"]["WT"]["dice"]["mean"] > 0.3
    again = run_cli("demo", "--out", tmp_path / "demo", "-n", "3")  # resumes: nothing to redo, same numbers
    assert again.returncode == 0
    assert json.loads((tmp_path / "demo" / "evaluation" / "summary.json").read_text())["per_region"] == summary["per_region"]
    assert np.isfinite(summary["per_region"]["ET"]["hd95"]["mean"])
