"""Export a tiny student with phantoms as held-out cases, then predict, tamper and break it.

Everything runs on small volumes (4 mm phantoms, 60x60x39) and a ~20k-parameter student with
random weights: parity is a property of the runtimes, not of what the network learnt.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data.case import load_case
from distill.data.conventions import get_convention
from distill.data.discovery import find_cases
from distill.data.nifti import read_nifti
from distill.data.phantoms import PhantomConfig, write_phantoms
from distill.errors import DataError, DistillError
from distill.export.onnx_export import ParityError, export_onnx
from distill.export.run import ExportConfig, ExportConfigError, export_package
from distill.infer.backends import BackendSpec, BackendUnavailable
from distill.infer.onnxruntime_session import onnxruntime_session, run_onnxruntime
from distill.infer.predict import PredictConfig, predict_folder
from distill.infer.predictor import InputMismatchError, Predictor
from distill.package import ModelPackage
from distill.students import build_student
from distill.train.chain import save_untrained_student

PHANTOM = PhantomConfig(spacing_mm=4.0)


def write_student_run(folder: Path, target_params: int = 20_000, seed: int = 0) -> Path:
    """A run folder as `distill train-student` leaves it: random weights and a minimal card."""
    return save_untrained_student(folder, target_params, seed=seed)

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export_predict")


@pytest.fixture(scope="module")
def student_run(workdir) -> Path:
    return write_student_run(workdir / "run")


@pytest.fixture(scope="module")
def phantom_dir(workdir) -> Path:
    """Two 4 mm phantoms in BraTS 2021 naming (the folder predict reads)."""
    write_phantoms(workdir / "phantoms", n_cases=2, seed=1, config=PHANTOM, progress=False)
    return workdir / "phantoms"


@pytest.fixture(scope="module")
def package_dir(workdir, student_run) -> Path:
    """The package, its parity gate run on one synthetic phantom (no held-out folder given)."""
    return export_package(
        ExportConfig(run_dir=student_run, out=workdir / "pkg", n_phantoms=1, phantom_spacing=4.0)
    ).package_dir


@pytest.fixture(scope="module")
def predictors(package_dir) -> dict[str, Predictor]:
    return {name: Predictor.from_package(package_dir, name, threads=2) for name in ("torch", "onnxruntime")}


def partial_folders(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if ".partial-" in p.name]


# ---------------------------------------------------------------------------------------------
# Export


def test_export_writes_a_verified_package_that_passed_the_gate(package_dir):
    package = ModelPackage.open(package_dir)
    gate = package.manifest.parity["onnxruntime"]
    assert gate["passed"] and len(gate["cases"]) == 1 and gate["cases"][0]["case_id"].startswith("phantom-")
    assert gate["max_abs_probability"] <= 1e-4 and gate["label_agreement"] >= 0.9999
    assert "phantom" in package.manifest.parity["held_out"]
    assert partial_folders(package_dir.parent) == []


def test_the_onnx_has_free_batch_and_spatial_axes(package_dir):
    """One graph, many shapes (none a multiple of the divisor), each matching torch."""
    package = ModelPackage.open(package_dir)
    session = onnxruntime_session(package.onnx_path, threads=2)
    model = package.load_student()
    for shape in [(1, 4, 37, 50, 23), (2, 4, 16, 20, 33), (1, 4, 9, 40, 17)]:
        x = torch.randn(shape)
        with torch.inference_mode():
            expected = torch.sigmoid(model(x)).numpy()
        actual = 1 / (1 + np.exp(-run_onnxruntime(session, x.numpy())))
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() <= 1e-4


def test_a_failing_parity_gate_raises_and_leaves_nothing(workdir, student_run, monkeypatch):
    """onnxruntime outputs shifted after the fact: the gate must catch it and the package must not appear."""
    import distill.export.run as export_run

    real = export_run.onnxruntime_logits_fn

    def shifted(data, threads=None):
        run = real(data, threads)
        return lambda images: run(images) + 0.5

    monkeypatch.setattr(export_run, "onnxruntime_logits_fn", shifted)
    out = workdir / "gate_failure" / "pkg"
    with pytest.raises(ParityError, match="onnxruntime disagrees with torch.*nothing was written"):
        export_package(ExportConfig(run_dir=student_run, out=out, n_phantoms=1))
    assert not out.exists()
    assert partial_folders(out.parent) == []


def test_a_deliberately_wrong_graph_fails_the_real_gate(workdir, student_run, monkeypatch):
    """The exporter hands over the graph of a differently initialised twin; onnxruntime really runs it."""
    import distill.export.run as export_run

    def export_twin(model, example_shape):
        torch.manual_seed(123)
        return export_onnx(build_student(model.config), example_shape)

    monkeypatch.setattr(export_run, "export_onnx", export_twin)
    out = workdir / "wrong_graph" / "pkg"
    with pytest.raises(ParityError):
        export_package(ExportConfig(run_dir=student_run, out=out, n_phantoms=1))
    assert not out.exists() and partial_folders(out.parent) == []


def test_an_existing_target_is_refused_without_overwrite(package_dir, student_run):
    with pytest.raises(ExportConfigError, match="already exists.*--overwrite"):
        export_package(ExportConfig(run_dir=student_run, out=package_dir, n_phantoms=1))


def test_export_with_held_out_folder_and_simplify_overwrites(workdir, student_run, phantom_dir):
    out = workdir / "pkg_simplified"
    first = export_package(
        ExportConfig(run_dir=student_run, out=out, held_out=phantom_dir, max_held_out=1, simplify=True)
    )
    second = export_package(
        ExportConfig(run_dir=student_run, out=out, held_out=phantom_dir, max_held_out=1, overwrite=True)
    )
    assert first.package_dir == second.package_dir == out
    package = ModelPackage.open(out)
    assert package.manifest.parity["onnxruntime"]["cases"][0]["case_id"] == "Phantom_00000"
    assert partial_folders(workdir) == []


def test_a_run_folder_without_weights_is_refused(tmp_path, student_run):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "student.json").write_text((student_run / "student.json").read_text())
    with pytest.raises(ExportConfigError, match="student.pt: missing"):
        export_package(ExportConfig(run_dir=tmp_path / "run", out=tmp_path / "pkg"))


# ---------------------------------------------------------------------------------------------
# Predict


def test_predict_folder_with_both_backends_writes_labels_on_each_input_grid(workdir, package_dir, phantom_dir):
    outputs = {}
    for backend in ("torch", "onnxruntime"):
        out = workdir / f"pred_{backend}"
        result = predict_folder(PredictConfig(package=package_dir, input_dir=phantom_dir, output_dir=out,
                                              backend=BackendSpec(backend, threads=2), progress=False))  # fmt: skip
        assert result.written == ("Phantom_00000", "Phantom_00001")
        outputs[backend] = out
    for files in find_cases(phantom_dir):
        source = read_nifti(files.images["t1"])
        torch_labels = read_nifti(outputs["torch"] / f"{files.case_id}.nii.gz")
        ort_labels = read_nifti(outputs["onnxruntime"] / f"{files.case_id}.nii.gz")
        assert torch_labels.data.shape == source.data.shape
        np.testing.assert_allclose(torch_labels.affine, source.affine, atol=1e-5)
        assert set(np.unique(torch_labels.data)) <= {0, 1, 2, 4}
        assert np.mean(torch_labels.data == ort_labels.data) >= 0.9999


def test_predict_writes_the_requested_convention_and_probabilities(workdir, package_dir, phantom_dir):
    out = workdir / "pred_2023"
    predict_folder(PredictConfig(package=package_dir, input_dir=phantom_dir, output_dir=out,
                                 label_convention="brats2023", save_probabilities=True, progress=False))  # fmt: skip
    labels_2023 = read_nifti(out / "Phantom_00000.nii.gz").data
    labels_2017 = read_nifti(workdir / "pred_torch" / "Phantom_00000.nii.gz").data
    assert set(np.unique(labels_2023)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(
        labels_2023, get_convention("brats2017").convert_to(labels_2017, get_convention("brats2023"))
    )
    with np.load(out / "Phantom_00000_probabilities.npz") as saved:
        assert saved["probabilities"].shape == (3, *labels_2023.shape) and saved["uncertainty"].dtype == np.float16


def test_mirror_tta_averages_eight_passes_and_a_resume_must_keep_it(workdir, package_dir, phantom_dir, predictors):
    case = load_case(find_cases(phantom_dir)[0], with_labels=False)
    plain = predictors["onnxruntime"]
    mirrored = Predictor(plain.package, plain.backend, tta="mirror8")
    one = plain.segment(case.images, case.affine, return_probabilities=True)
    eight = mirrored.segment(case.images, case.affine, return_probabilities=True)
    assert eight.labels.shape == one.labels.shape == case.shape and mirrored.describe()["tta"] == "mirror8"
    # the random student is not mirror-symmetric, so averaging its mirrorings changes its maps
    assert np.abs(eight.probabilities - one.probabilities).max() > 1e-3
    out = workdir / "pred_mirror8"
    result = predict_folder(PredictConfig(package=package_dir, input_dir=phantom_dir, output_dir=out, tta="mirror8",
                                          backend=BackendSpec("onnxruntime", threads=2), progress=False))  # fmt: skip
    assert result.written == ("Phantom_00000", "Phantom_00001")
    np.testing.assert_array_equal(read_nifti(out / f"{find_cases(phantom_dir)[0].case_id}.nii.gz").data,
                                  eight.labels)  # fmt: skip
    with pytest.raises(DataError, match=r"--tta was \"mirror8\", now unset"):
        predict_folder(PredictConfig(package=package_dir, input_dir=phantom_dir, output_dir=out, skip_existing=True,
                                     backend=BackendSpec("onnxruntime", threads=2), progress=False))  # fmt: skip
    with pytest.raises(DistillError, match="unknown test-time augmentation 'flip'"):
        Predictor.from_package(package_dir, "onnxruntime", tta="flip")


def test_segment_returns_maps_on_an_oblique_input_grid(predictors, write_brats_dataset, tmp_path):
    """Tiny anisotropic, rotated, flipped cases: output grid = input grid, maps in range."""
    case = load_case(find_cases(write_brats_dataset(tmp_path / "oblique", n=1))[0], with_labels=False)
    result = predictors["onnxruntime"].segment(
        case.images, case.affine, return_probabilities=True, return_uncertainty=True
    )
    assert result.labels.shape == case.shape and result.labels.dtype == np.uint8
    assert result.probabilities.shape == result.uncertainty.shape == (3, *case.shape)
    assert 0.0 <= result.probabilities.min() and result.probabilities.max() <= 1.0
    assert 0.0 <= result.uncertainty.min() and result.uncertainty.max() <= 1.0
    assert not result.tiled and set(result.timings) == {"preprocess", "model", "postprocess"}


def test_large_volumes_go_through_the_sliding_window(predictors, phantom_dir):
    predictor = predictors["torch"]
    case = load_case(find_cases(phantom_dir)[0], with_labels=False)
    whole = predictor.segment(case.images, case.affine)
    tiled_predictor = Predictor(predictor.package, predictor.backend)
    tiled_predictor.settings = replace(predictor.settings, whole_volume_max_voxels=1000, tile=(32, 32, 32))
    tiled = tiled_predictor.segment(case.images, case.affine)
    assert tiled.tiled and not whole.tiled
    assert tiled.labels.shape == whole.labels.shape == case.shape


def test_a_wrong_channel_count_is_a_clear_error(predictors, phantom_dir):
    case = load_case(find_cases(phantom_dir)[0], with_labels=False)
    with pytest.raises(InputMismatchError, match=r"expects 4 channels \(t1, t1ce, t2, flair, in this order\)"):
        predictors["torch"].segment(case.images[:3], case.affine)


def test_modality_names_reorder_channels_and_unknown_names_are_refused(predictors, phantom_dir):
    predictor = predictors["torch"]
    case = load_case(find_cases(phantom_dir)[0], with_labels=False)
    shuffled = case.images[[3, 1, 0, 2]]
    named = predictor.segment(shuffled, case.affine, modalities=["T2F", "t1c", "t1n", "t2w"])
    np.testing.assert_array_equal(named.labels, predictor.segment(case.images, case.affine).labels)
    with pytest.raises(InputMismatchError, match="unknown modality 'dwi'.*t1ce: t1ce, t1c, t1gd"):
        predictor.segment(case.images, case.affine, modalities=["t1", "t1ce", "t2", "dwi"])
    with pytest.raises(InputMismatchError, match="once each"):
        predictor.segment(case.images, case.affine, modalities=["t1", "t1", "t2", "flair"])


def test_an_uninstalled_tensorrt_backend_says_what_to_install(package_dir):
    if importlib_available("tensorrt") and torch.cuda.is_available():
        pytest.skip("TensorRT and a GPU are present here; tests/integration/test_tensorrt.py covers the backend")
    with pytest.raises(BackendUnavailable, match="(?i)install.*tensorrt|tensorrt.*install"):
        Predictor.from_package(package_dir, "tensorrt")


def test_onnxruntime_without_cuda_provider_says_what_to_install(package_dir):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        Predictor.from_package(package_dir, "onnxruntime:cuda")


def test_the_predictor_imports_no_training_or_teacher_code():
    code = (
        "import sys, distill.infer.predictor, distill.infer.predict, distill.infer.bench; "
        "print(sorted(m for m in sys.modules if m.startswith(('distill.train', 'distill.losses', 'distill.teacher'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_torch_bf16_keeps_norms_in_fp32_and_agrees_with_fp32(package_dir, phantom_dir):
    case = load_case(find_cases(phantom_dir)[0], with_labels=False)
    fp32 = Predictor.from_package(package_dir, "torch", threads=2)
    bf16 = Predictor.from_package(package_dir, "torch:bf16", threads=2)
    modules = list(bf16.backend.model.modules())
    assert all(m.weight.dtype == torch.float32 for m in modules if isinstance(m, torch.nn.InstanceNorm3d))
    assert all(m.weight.dtype == torch.bfloat16 for m in modules if isinstance(m, torch.nn.Conv3d))
    reference = fp32.segment(case.images, case.affine, return_probabilities=True)
    reduced = bf16.segment(case.images, case.affine, return_probabilities=True)
    assert np.abs(reduced.probabilities - reference.probabilities).max() < 0.1
    assert np.mean(reduced.labels == reference.labels) >= 0.99


@pytest.mark.slow
def test_torch_compile_on_the_cpu_matches_eager(package_dir, phantom_dir):
    case = load_case(find_cases(phantom_dir)[0], with_labels=False)
    eager = Predictor.from_package(package_dir, "torch", threads=2).segment(
        case.images, case.affine, return_probabilities=True
    )
    compiled = Predictor.from_package(package_dir, "torch:compile", threads=2).segment(
        case.images, case.affine, return_probabilities=True
    )
    assert np.abs(compiled.probabilities - eager.probabilities).max() < 1e-4


@pytest.mark.gpu
def test_torch_cuda_variants_agree_with_the_cpu(package_dir, phantom_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    case = load_case(find_cases(phantom_dir)[0], with_labels=False)
    reference = Predictor.from_package(package_dir, "torch").segment(case.images, case.affine).labels
    for backend in ("torch:cuda", "torch:cuda:fp16", "torch:cuda:bf16", "torch:cuda:fp16:graphs"):
        labels = Predictor.from_package(package_dir, backend).segment(case.images, case.affine).labels
        assert np.mean(labels == reference) >= 0.99, backend


# ---------------------------------------------------------------------------------------------
# Bench


def test_bench_reports_every_stage_with_device_threads_and_versions(package_dir, phantom_dir, tmp_path):
    from distill.infer.bench import BenchConfig, run_bench

    result = run_bench(BenchConfig(package=package_dir, input_dir=phantom_dir, runs=2, warmup=1, e2e_runs=1, threads=2,
                                   full_shape=(64, 64, 48), out=tmp_path / "bench.json"))  # fmt: skip
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["versions"]["onnxruntime"] and data["host"]["cpu"]
    labels = [r["backend"] for r in data["results"]]
    assert labels[:2] == ["torch-cpu-fp32", "onnxruntime-cpu-fp32"]
    for entry in data["results"][:2]:
        assert entry["device"] and entry["threads"] == 2 and entry["versions"]
        assert {"p50_ms", "p95_ms", "p99_ms"} <= set(entry["model_only"])
        assert entry["full_shape"] == [64, 64, 48]
        assert set(entry["end_to_end"]) == {"decode", "preprocess", "model", "postprocess", "encode", "total"}
    assert "torch-cpu-fp32" in result.table()


def importlib_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
