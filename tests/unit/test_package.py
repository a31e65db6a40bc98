"""Model package layout, manifest, hashing and refusal of damaged or foreign packages; small pure helpers."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from synthetic_data import synthetic_case

from distill.core.hashing import canonical_hash
from distill.data.nifti import write_nifti
from distill.infer.backends import BackendOptionError, BackendSpec
from distill.infer.bench import latency_stats
from distill.infer.predictor import binary_entropy
from distill.package import (
    FORMAT_VERSION,
    MANIFEST_HASH_NAME,
    MANIFEST_NAME,
    ModelPackage,
    PackageError,
    default_inference_settings,
    safe_relative_path,
)
from distill.train.chain import save_untrained_student

MODALITY_SUFFIXES = ("t1", "t1ce", "t2", "flair")


def write_student_run(folder: Path, target_params: int = 20_000, seed: int = 0) -> Path:
    """A run folder as `distill train-student` leaves it: random weights and a minimal card."""
    return save_untrained_student(folder, target_params, seed=seed, validation={"dice_teacher/WT": 0.5})

def write_tiny_cases(root: Path, n: int = 1, shape=(40, 36, 30)) -> Path:
    """``n`` tiny BraTS-2017-named cases (random brain box, no labels needed for export)."""
    for i in range(n):
        images, _ = synthetic_case(i, shape)
        for channel, suffix in enumerate(MODALITY_SUFFIXES):
            write_nifti(
                root / f"Tiny_{i:03d}" / f"Tiny_{i:03d}_{suffix}.nii.gz", images[channel], np.diag([1.5, 1.5, 2.0, 1.0])
            )
    return root


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory) -> Path:
    from distill.export.run import ExportConfig, export_package

    root = tmp_path_factory.mktemp("package")
    run = write_student_run(root / "run")
    cases = write_tiny_cases(root / "held_out")
    return export_package(ExportConfig(run_dir=run, out=root / "pkg", held_out=cases)).package_dir


@pytest.fixture
def package_copy(package_dir, tmp_path) -> Path:
    return Path(shutil.copytree(package_dir, tmp_path / "copy"))


def save_manifest(package: Path, manifest: dict) -> None:
    """Write a changed manifest *with* a matching hash, as a crafted package would: the checks
    behind the integrity hash must hold on their own."""
    (package / MANIFEST_NAME).write_text(json.dumps(manifest))
    (package / MANIFEST_HASH_NAME).write_text(canonical_hash(manifest) + "\n")


def rewrite_manifest(package: Path, **changes) -> None:
    manifest = json.loads((package / MANIFEST_NAME).read_text())
    manifest.update(changes)
    save_manifest(package, manifest)


# ---------------------------------------------------------------------------------------------
# Layout and manifest


def test_package_holds_the_documented_files_and_lists_their_hashes(package_dir):
    names = sorted(p.relative_to(package_dir).as_posix() for p in package_dir.rglob("*") if p.is_file())
    assert names == ["model.json", "model.json.sha256", "model.onnx", "model.pt"]
    manifest = json.loads((package_dir / MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == {"model.onnx", "model.pt"}
    import hashlib

    for name, entry in manifest["files"].items():
        data = (package_dir / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_manifest_carries_preprocessing_channels_labels_and_provenance(package_dir):
    manifest = json.loads((package_dir / MANIFEST_NAME).read_text())
    assert manifest["format"] == "distill-model-package" and manifest["format_version"] == FORMAT_VERSION
    assert [c["modality"] for c in manifest["inputs"]] == ["t1", "t1ce", "t2", "flair"]
    assert "t1c" in manifest["inputs"][1]["aliases"] and "t2f" in manifest["inputs"][3]["aliases"]
    assert manifest["output"] == {
        "kind": "sigmoid",
        "regions": ["WT", "TC", "ET"],
        "thresholds": {"WT": 0.5, "TC": 0.5, "ET": 0.5},
    }
    assert manifest["labels"]["convention"] == "brats2017" and manifest["labels"]["legend"]["4"] == "enhancing tumour"
    assert manifest["preprocessing"]["divisor"] == 16 and manifest["preprocessing"]["target_spacing"] is None
    assert (
        manifest["model"]["opset"] == 17
        and manifest["model"]["parameters"] == manifest["source"]["student_card"]["parameters"]
    )
    assert manifest["source"]["teacher_identity_hash"] == "0" * 64
    gate = manifest["parity"]["onnxruntime"]
    assert gate["passed"] and gate["max_abs_probability"] <= 1e-4 and gate["label_agreement"] >= 0.9999
    assert manifest["postprocessing"]["enforce_hierarchy"] is True


def test_open_exposes_typed_settings(package_dir):
    package = ModelPackage.open(package_dir)
    assert package.modalities == ("t1", "t1ce", "t2", "flair")
    assert package.preprocess_config.divisor == 16
    assert package.convention.name == "brats2017"
    assert package.thresholds == (0.5, 0.5, 0.5)
    assert package.inference.tile == (128, 128, 128)
    assert package.inference.profile_min == (1, 4, 32, 32, 32)
    model = package.load_student()
    assert sum(p.numel() for p in model.parameters()) == package.parameters


def test_default_inference_settings_round_up_to_the_divisor():
    settings = default_inference_settings(in_channels=4, divisor=24, max_edge=250, tile_edge=100)
    assert settings.tile == (120, 120, 120)
    assert settings.profile_min == (1, 4, 48, 48, 48)
    assert settings.profile_opt == (1, 4, 168, 192, 168)
    assert settings.profile_max == (1, 4, 264, 264, 264)
    assert type(settings).from_dict(settings.to_dict()) == settings


# ---------------------------------------------------------------------------------------------
# Refusals


def test_an_altered_file_is_refused(package_copy):
    onnx_path = package_copy / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[-1] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="altered or damaged.*re-export"):
        ModelPackage.open(package_copy)


def test_a_missing_file_is_refused(package_copy):
    (package_copy / "model.pt").unlink()
    with pytest.raises(PackageError, match="model.pt: missing from the package"):
        ModelPackage.open(package_copy)


def test_a_newer_format_is_refused_with_upgrade_advice(package_copy):
    rewrite_manifest(package_copy, format_version=FORMAT_VERSION + 1, toolkit_version="9.0.0")
    with pytest.raises(PackageError, match=r"newer Distill \(9\.0\.0\).*upgrade Distill"):
        ModelPackage.open(package_copy)


def test_another_format_is_refused(package_copy):
    rewrite_manifest(package_copy, format="something-else")
    with pytest.raises(PackageError, match="not a Distill model package"):
        ModelPackage.open(package_copy)


def test_a_folder_without_manifest_is_not_a_package(tmp_path):
    with pytest.raises(PackageError, match="no model.json"):
        ModelPackage.open(tmp_path)


def test_manifest_paths_cannot_leave_the_package(package_copy):
    manifest = json.loads((package_copy / MANIFEST_NAME).read_text())
    manifest["files"]["../outside.bin"] = {"sha256": "0" * 64, "bytes": 0}
    save_manifest(package_copy, manifest)
    with pytest.raises(PackageError, match="points outside the package"):
        ModelPackage.open(package_copy)
    for bad in ("/etc/passwd", "a/../../b", "..\\x"):
        with pytest.raises(PackageError):
            safe_relative_path(package_copy, bad)


def test_an_onnx_with_external_data_is_refused(package_copy):
    import onnx

    from distill.package import list_package_files, write_manifest

    model = onnx.load(str(package_copy / "model.onnx"))
    onnx.save_model(model, str(package_copy / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)  # fmt: skip
    # hashes match: only the external-data check can refuse it
    write_manifest(package_copy, ModelPackage.open(package_copy, verify=False).manifest)
    assert "weights.bin" in list_package_files(package_copy)
    with pytest.raises(PackageError, match="external data"):
        ModelPackage.open(package_copy)


# ---------------------------------------------------------------------------------------------
# Small helpers with hand-computed values


def test_latency_stats_percentiles_by_hand():
    stats = latency_stats([0.001, 0.002, 0.003, 0.004])
    # linear interpolation: p50 at rank 1.5 -> 2.5 ms; p95 at rank 2.85 -> 3.85 ms; p99 at 2.97 -> 3.97 ms
    assert stats == {
        "n": 4, "p50_ms": 2.5, "p95_ms": 3.85, "p99_ms": 3.97, "mean_ms": 2.5, "min_ms": 1.0, "max_ms": 4.0
    }  # fmt: skip


def test_binary_entropy_by_hand():
    values = binary_entropy(np.array([0.0, 0.5, 1.0, 0.25], dtype=np.float32))
    # H(0.25) = 0.25*2 + 0.75*log2(4/3) = 0.5 + 0.311278 = 0.811278
    np.testing.assert_allclose(values, [0.0, 1.0, 0.0, 0.811278], atol=1e-6)


@pytest.mark.parametrize(
    ("text", "label"),
    [("torch", "torch-cpu-fp32"), ("torch:cuda:fp16:graphs", "torch-cuda-fp16+graphs"),
     ("onnxruntime:cuda", "onnxruntime-cuda-fp32"), ("tensorrt:int8", "tensorrt-cuda-int8"),
     ("torch:compile:bf16", "torch-cpu-bf16+compile"), ("onnxruntime:tensorrt:fp16", "onnxruntime-tensorrt-fp16")],
)  # fmt: skip
def test_backend_spec_parses_its_text_form(text, label):
    assert BackendSpec.parse(text).label == label


@pytest.mark.parametrize(
    ("text", "message"),
    [("caffe", "unknown backend"), ("torch:cpu:graphs", "CUDA graphs"), ("tensorrt:bf16", "supports precisions"),
     ("onnxruntime:compile", "torch.compile"), ("onnxruntime:fp16", "TensorRT provider"),
     ("torch:turbo", "unknown backend option")],
)  # fmt: skip
def test_backend_spec_refuses_impossible_combinations(text, message):
    with pytest.raises(BackendOptionError, match=message):
        BackendSpec.parse(text)


def test_the_external_data_check_needs_no_onnx_and_agrees_with_it(package_copy):
    """The protobuf walk finds exactly the tensors onnx's own helper calls external."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    from distill.package.onnx_external import MalformedProtobuf, external_tensor_names

    assert external_tensor_names((package_copy / "model.onnx").read_bytes()) == []
    model = onnx.load(str(package_copy / "model.onnx"))
    onnx.save_model(model, str(package_copy / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=1024)  # fmt: skip
    expected = [t.name for t in onnx.load(str(package_copy / "ext.onnx"), load_external_data=False).graph.initializer
                if uses_external_data(t)]  # fmt: skip
    assert expected and external_tensor_names((package_copy / "ext.onnx").read_bytes()) == expected
    with pytest.raises(MalformedProtobuf):
        external_tensor_names(b"\x0a\xff\x01")  # a length-delimited field longer than the bytes


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("output", "thresholds", {"WT": 2.0, "TC": 0.5, "ET": 0.5}, "output.thresholds.WT: 2.0 is not a probability"),
        ("output", "thresholds", {"WT": 0.5, "TC": 0.5}, "output.thresholds.ET: None"),
        ("output", "regions", ["WT", "ET", "TC"], "output.regions"),
        ("output", "kind", "softplus", "output.kind"),
        ("preprocessing", "divisor", 0, "preprocessing.divisor"),
        ("preprocessing", "target_spacing", [1.0, -1.0, 1.0], "preprocessing.target_spacing"),
        ("labels", "convention", "brats1999", "labels.convention"),
        ("inference", "tile", [100, 128, 128], "inference.tile"),
        ("preprocessing", "image_order", "cubic", "preprocessing"),
    ],
)
def test_an_edited_manifest_that_would_segment_wrongly_is_refused(package_copy, section, key, value, message):
    manifest = json.loads((package_copy / MANIFEST_NAME).read_text())
    manifest[section][key] = value
    (package_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=re.escape(message)) as caught:
        ModelPackage.open(package_copy, verify=False)
    assert str(package_copy / MANIFEST_NAME) in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_section_is_named(package_copy):
    manifest = json.loads((package_copy / MANIFEST_NAME).read_text())
    del manifest["postprocessing"]
    (package_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="postprocessing: missing"):
        ModelPackage.open(package_copy, verify=False)


def test_a_plausible_hand_edit_is_refused_by_the_manifest_hash(package_copy):
    manifest = json.loads((package_copy / MANIFEST_NAME).read_text())
    manifest["output"]["thresholds"]["ET"] = 0.3  # a valid value: only the hash can tell
    (package_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="edited after export") as caught:
        ModelPackage.open(package_copy, verify=False)
    assert str(package_copy / MANIFEST_NAME) in str(caught.value) and "--thresholds" in str(caught.value)


def test_reformatting_the_manifest_keeps_its_hash_valid(package_copy):
    manifest = json.loads((package_copy / MANIFEST_NAME).read_text())
    (package_copy / MANIFEST_NAME).write_text(json.dumps(manifest, indent=None, sort_keys=True))
    assert ModelPackage.open(package_copy).thresholds == tuple(manifest["output"]["thresholds"].values())


def test_a_package_without_its_manifest_hash_is_refused(package_copy):
    (package_copy / MANIFEST_HASH_NAME).unlink()
    with pytest.raises(PackageError, match=r"model\.json\.sha256: missing"):
        ModelPackage.open(package_copy)


def test_the_manifest_round_trips_through_its_typed_form(package_dir):
    document = json.loads((package_dir / MANIFEST_NAME).read_text())
    assert ModelPackage.open(package_dir).manifest.to_dict() == document
