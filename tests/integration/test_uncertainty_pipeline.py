"""The distilled uncertainty end to end: train with the head -> export (parity) -> Predictor -> predict.

One student is trained for a few steps on the stub cache (tests/conftest.py) with
``uncertainty_head=True``, exported with one 4 mm phantom as the parity case, and run on a
case with an oblique, anisotropic affine. What the head learnt in 4 steps does not matter here:
the tests check where the map comes from, where it goes, and that every path agrees.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from distill.data.conventions import REGIONS
from distill.data.discovery import MODALITIES
from distill.data.phantoms import PhantomConfig, make_phantom, write_phantoms
from distill.data.preprocess import restore_probabilities_in_crop, uncrop
from distill.export.run import ExportConfig, export_package
from distill.infer.predict import PredictConfig, predict_folder
from distill.infer.predictor import NoUncertaintyOutput, Predictor
from distill.package import ModelPackage
from distill.train import TrainConfig, train_student

REPO = Path(__file__).resolve().parents[2]
PLAIN_PACKAGE = REPO / "benchmarks" / "realdata" / "packages" / "brats-30k"
FAST = dict(steps=4, batch_size=1, patch_size=(32, 32, 32), checkpoint_every=2, progress=False)
PHANTOM = PhantomConfig(spacing_mm=4.0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uncertainty_pipeline")


@pytest.fixture(scope="module")
def trained_run(stub_cache, workdir) -> Path:
    train_student(TrainConfig(cache=stub_cache, out=workdir / "run", params=6000, uncertainty_head=True,
                              uncertainty_head_weight=0.5, **FAST))  # fmt: skip
    return workdir / "run"


@pytest.fixture(scope="module")
def package_dir(trained_run, workdir) -> Path:
    return export_package(ExportConfig(run_dir=trained_run, out=workdir / "pkg", n_phantoms=1,
                                       phantom_spacing=4.0)).package_dir  # fmt: skip


@pytest.fixture(scope="module")
def oblique_case() -> tuple[np.ndarray, np.ndarray]:
    """A 4 mm phantom's images under an oblique affine with spacings 3.5, 4.5 and 5 mm."""
    phantom = make_phantom(9_300, PHANTOM)
    images = np.stack([phantom.images[m] for m in MODALITIES]).astype(np.float32)
    theta = np.deg2rad(9.0)
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-3.5, 4.5, 5.0])
    affine[:3, 3] = (80.0, -12.5, 30.0)
    return images, affine


def test_training_with_the_head_logs_its_loss_and_cards_its_cost(trained_run, stub_cache):
    card = json.loads((trained_run / "student.json").read_text())
    head = card["uncertainty_head"]
    w0 = card["student"]["widths"][0]
    assert card["student"]["uncertainty_head"] is True and head["parameters"] == 27 * w0 * 3 + 3
    assert head["weight"] == 0.5 and "stub:smoothed-labels" in head["source"]
    assert head["passes"] == 2  # the stub teacher: 2 members, no TTA
    assert card["loss"]["uncertainty_head_weight"] == 0.5
    with open(next(trained_run.glob("links/*/log.csv"))) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all(float(r["uncertainty_head/raw"]) > 0 for r in rows)
    assert all(float(r["uncertainty_head/weight"]) == 0.5 for r in rows)


def test_export_declares_the_output_and_gates_its_parity(package_dir):
    package = ModelPackage.open(package_dir)
    section = package.manifest.uncertainty
    assert package.has_uncertainty and section.output.name == "uncertainty" and section.regions == REGIONS
    assert section.range == (0.0, 0.5) and section.units.startswith("probability")
    assert "stub:smoothed-labels" in section.source and section.passes == 2
    assert "not a calibrated probability" in section.meaning
    gate = package.manifest.parity["onnxruntime"]
    assert gate["passed"] and gate["max_abs_uncertainty"] <= 5e-4
    assert all("max_abs_uncertainty" in case for case in gate["cases"])
    import onnx

    graph = onnx.load(str(package.onnx_path)).graph
    assert [o.name for o in graph.output] == ["logits", "uncertainty"]


def test_the_predictor_returns_the_map_on_the_input_grid(package_dir, oblique_case):
    images, affine = oblique_case
    results = {}
    for backend in ("torch", "onnxruntime"):
        predictor = Predictor.from_package(package_dir, backend, threads=2)
        result = predictor.segment(images, affine, return_distilled_uncertainty=True)
        assert result.distilled_uncertainty.shape == (3, *images.shape[1:])
        assert result.distilled_uncertainty.dtype == np.float32
        assert 0.0 <= result.distilled_uncertainty.min() and result.distilled_uncertainty.max() <= 0.5
        # the labels do not depend on the map being asked for
        np.testing.assert_array_equal(result.labels, predictor.segment(images, affine).labels)
        # the same map as the network's on the preprocessed grid, resampled back and placed by hand
        prepared = predictor.prepare(images, affine)
        _, on_grid, _ = predictor.infer_maps(prepared.images)
        expected = uncrop(restore_probabilities_in_crop(on_grid, prepared.record), prepared.record)
        np.testing.assert_array_equal(result.distilled_uncertainty, expected)
        outside = np.ones(images.shape[1:], bool)
        outside[tuple(slice(a, b) for a, b in prepared.record.bbox)] = False
        assert not result.distilled_uncertainty[:, outside].any()  # 0 outside the brain's box
        results[backend] = result.distilled_uncertainty
    assert np.abs(results["torch"] - results["onnxruntime"]).max() <= 1e-4


def test_predict_save_uncertainty_writes_a_4d_float32_nifti(package_dir, workdir, oblique_case):
    cases = workdir / "cases"
    write_phantoms(cases, n_cases=1, seed=4, config=PHANTOM, progress=False)
    out = workdir / "predicted"
    result = predict_folder(PredictConfig(package=package_dir, input_dir=cases, output_dir=out,
                                          save_uncertainty=True, progress=False))  # fmt: skip
    (case_id,) = result.written
    image = nib.load(out / f"{case_id}_uncertainty.nii.gz")
    labels = nib.load(out / f"{case_id}.nii.gz")
    assert image.shape == (*labels.shape, 3) and image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.affine, labels.affine)
    values = np.asanyarray(image.dataobj)
    assert 0.0 <= values.min() and values.max() <= 0.5 and values.max() > 0
    assert not (out / f"{case_id}_probabilities.npz").exists()  # only what was asked for


def run_main(monkeypatch, capsys, *args) -> tuple[int, str]:
    from distill.cli import main

    monkeypatch.setattr(sys, "argv", ["distill", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


@pytest.mark.skipif(not PLAIN_PACKAGE.is_dir(), reason="the committed real-data packages are absent")
def test_save_uncertainty_from_a_package_without_the_head_fails_in_one_line(monkeypatch, capsys, workdir):
    code, err = run_main(monkeypatch, capsys, "predict", PLAIN_PACKAGE, workdir, workdir / "refused",
                         "--save-uncertainty", "--no-progress")  # fmt: skip
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(PLAIN_PACKAGE) in " ".join(err.split()) and "no distilled uncertainty output" in " ".join(err.split())
    with pytest.raises(NoUncertaintyOutput, match="uncertainty_head=true"):
        Predictor.from_package(PLAIN_PACKAGE, "torch", verify=False).check_distilled_uncertainty()
