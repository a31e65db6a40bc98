"""`distill export`, `predict` and `bench` as a user runs them.

The commands live in distill.cli_infer; these tests mount them on a fresh typer app with
``register`` (what distill.cli does), and, once the main CLI lists them, also run the real
``python -m distill`` process for the error path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from distill.cli_infer import register
from distill.data.nifti import read_nifti
from distill.data.phantoms import PhantomConfig, write_phantoms
from distill.errors import DistillError
from distill.train.chain import save_untrained_student


def write_student_run(folder: Path, target_params: int = 20_000) -> Path:
    """A run folder as `distill train-student` leaves it: random weights and a minimal card."""
    return save_untrained_student(folder, target_params)

@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(lambda: None)  # a group, as in distill.cli, so commands are named
    register(app)
    return app


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_cases")
    write_phantoms(root / "cases", n_cases=1, seed=2, config=PhantomConfig(spacing_mm=4.0), progress=False)
    return root / "cases"


@pytest.fixture(scope="module")
def package(app, cases, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_export")
    run = write_student_run(root / "run")
    result = CliRunner().invoke(app, ["export", str(run), str(root / "pkg"), "--held-out", str(cases),
                                      "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert "parity onnxruntime vs torch on 1 case(s)" in result.output
    return root / "pkg"


def test_export_then_predict_then_bench(app, package, cases, tmp_path):
    runner = CliRunner()
    predicted = runner.invoke(app, ["predict", str(package), str(cases), str(tmp_path / "out"),
                                    "--backend", "onnxruntime", "--threads", "2", "--label-convention", "brats2023",
                                    "--no-progress"])  # fmt: skip
    assert predicted.exit_code == 0, predicted.output
    labels = read_nifti(tmp_path / "out" / "Phantom_00000.nii.gz")
    assert labels.data.shape == read_nifti(next(cases.glob("*/*_t1.nii.gz"))).data.shape
    assert set(np.unique(labels.data)) <= {0, 1, 2, 3}

    bench = runner.invoke(app, ["bench", str(package), "--input", str(cases),
                                "--backend", "torch", "--backend", "onnxruntime",
                                "--runs", "2", "--warmup", "1", "--e2e-runs", "1",
                                "--out", str(tmp_path / "bench.json")])  # fmt: skip
    assert bench.exit_code == 0, bench.output
    assert "torch-cpu-fp32" in bench.output and "onnxruntime-cpu-fp32" in bench.output
    assert [r["backend"] for r in json.loads((tmp_path / "bench.json").read_text())["results"]] == [
        "torch-cpu-fp32", "onnxruntime-cpu-fp32"
    ]


def _tensorrt_runs_here() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_tensorrt_runs_here(), reason="TensorRT and a GPU are present: the tensorrt backend would run")
def test_bad_input_raises_a_distill_error(app, package, cases, tmp_path):
    """What distill.cli.main turns into one line and exit code 2."""
    runner = CliRunner()
    missing = runner.invoke(app, ["predict", str(tmp_path / "nowhere"), str(cases), str(tmp_path / "out")])
    assert isinstance(missing.exception, DistillError) and "not a folder" in str(missing.exception)
    tensorrt = runner.invoke(app, ["predict", str(package), str(cases), str(tmp_path / "out"), "--backend", "tensorrt"])
    assert isinstance(tensorrt.exception, DistillError), tensorrt.output
    assert "install" in str(tensorrt.exception).lower()


def test_the_real_cli_reports_a_bad_package_in_one_line(package, cases, tmp_path):
    listed = subprocess.run([sys.executable, "-m", "distill", "--help"], capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "predict" in listed.stdout, listed.stdout + listed.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text(json.dumps({"format": "distill-model-package", "format_version": 99}))
    result = subprocess.run([sys.executable, "-m", "distill", "predict", str(broken), str(cases),
                             str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "newer Distill" in result.stderr.replace("\n", "")


def test_keep_largest_is_written_into_the_package_and_a_bad_region_refused(app, cases, tmp_path):
    from distill.package import ModelPackage

    run = write_student_run(tmp_path / "run")
    runner = CliRunner()
    made = runner.invoke(app, ["export", str(run), str(tmp_path / "pkg"), "--held-out", str(cases),
                               "--keep-largest", "WT", "--keep-largest", "TC", "--min-size-ml", "ET=0.5"])  # fmt: skip
    assert made.exit_code == 0, made.output
    written = ModelPackage.open(tmp_path / "pkg").postprocess_config
    assert written.keep_largest == ("WT", "TC") and dict(written.min_size) == {"ET": 0.5}
    assert written.min_size_unit == "ml"
    bad_volume = runner.invoke(app, ["export", str(run), str(tmp_path / "other"), "--min-size-ml", "WT=big"])
    assert bad_volume.exit_code == 2 and "expected REGION=ML" in bad_volume.output
    refused = runner.invoke(app, ["export", str(run), str(tmp_path / "other"), "--keep-largest", "NCR"])
    assert refused.exit_code == 2 and "NCR is not a region; use WT, TC, ET" in refused.output
    assert not (tmp_path / "other").exists()
