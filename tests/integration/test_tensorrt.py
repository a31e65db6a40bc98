"""TensorRT engines: graph preparation (runs anywhere, in onnxruntime) and real builds (marked ``tensorrt``).

The graph rewrites that decide precision (mixed FP16 with FP32 norms, explicit INT8 Q/DQ) are
plain ONNX, so they are checked here on every machine by running them in onnxruntime. The
``tensorrt`` tests build, gate, cache and run real engines; they skip, saying why, where the
``tensorrt`` builder or a CUDA GPU is missing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.export.onnx_export import export_onnx
from distill.export.tensorrt_build import (
    calibrate_activation_ranges,
    calibration_tiles,
    conv_activation_inputs,
    insert_qdq,
    prepare_onnx,
    to_mixed_fp16,
)
from distill.infer.onnxruntime_session import onnxruntime_session, run_onnxruntime
from distill.infer.tensorrt_runtime import REWRITE_VERSION, EngineCache, EngineError
from distill.students import build_student, student_config


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


@pytest.fixture(scope="module", params=["unet", "separable-gelu", "group-norm"])
def exported(request):
    """(torch model, FP32 ONNX bytes) for a tiny student of three shapes of graph."""
    torch.manual_seed(0)
    configs = {
        "unet": student_config("unet-tiny"),
        "separable-gelu": student_config("unet-separable-tiny", activation="gelu"),  # Resize + Erf constants
        "group-norm": student_config("unet-tiny", norm="group"),
    }
    model = build_student(configs[request.param]).eval()
    return model, export_onnx(model, (1, 4, 35, 33, 29))


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """A brain-like preprocessed volume: z-scored noise inside a box, zeros around it."""
    rng = np.random.default_rng(0)
    images = np.zeros((4, 48, 48, 40), dtype=np.float32)
    images[:, 6:42, 8:40, 5:35] = rng.normal(size=(4, 36, 32, 30))
    return images


# ---------------------------------------------------------------------------------------------
# Graph preparation (no TensorRT needed)


def test_mixed_fp16_keeps_every_norm_in_fp32(exported):
    import onnx
    from onnx import TensorProto

    _, data = exported
    model = to_mixed_fp16(onnx.load_from_string(data))
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {t.name: t for t in model.graph.initializer}
    norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert norms
    for norm in norms:
        cast_in = producers[norm.input[0]]
        assert cast_in.op_type == "Cast" and cast_in.attribute[0].i == TensorProto.FLOAT
        assert all(initializers[name].data_type == TensorProto.FLOAT for name in norm.input[1:])
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert all(initializers[n.input[1]].data_type == TensorProto.FLOAT16 for n in convs)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]


def test_mixed_fp16_matches_fp32_within_half_precision(exported, volume):
    import onnx

    model, data = exported
    half = onnxruntime_session(to_mixed_fp16(onnx.load_from_string(data)).SerializeToString())
    with torch.inference_mode():
        reference = sigmoid(model(torch.from_numpy(volume[None])).numpy())
    assert np.abs(sigmoid(run_onnxruntime(half, volume[None])) - reference).max() < 5e-3


def test_calibration_tiles_are_centred_in_the_brain(volume):
    tiles = calibration_tiles([volume], n_tiles=6, tile=(32, 32, 32), seed=1)
    assert len(tiles) == 6 and all(t.shape == (4, 32, 32, 32) for t in tiles)
    assert all(np.any(t[:, 16, 16, 16] != 0) for t in tiles)  # the centre voxel is brain


def test_explicit_qdq_quantises_every_conv_and_stays_close(exported, volume):
    import onnx
    from onnx import numpy_helper

    model, data = exported
    ranges = calibrate_activation_ranges(data, calibration_tiles([volume], 4, (32, 32, 32)))
    assert [r.tensor for r in ranges] == conv_activation_inputs(onnx.load_from_string(data))
    quantised = insert_qdq(onnx.load_from_string(data), ranges)
    producers = {out: node for node in quantised.graph.node for out in node.output}
    initializers = {t.name: t for t in quantised.graph.initializer}
    convs = [n for n in quantised.graph.node if n.op_type == "Conv"]
    for conv in convs:
        assert producers[conv.input[0]].op_type == producers[conv.input[1]].op_type == "DequantizeLinear"
        weight_scale = numpy_helper.to_array(initializers[producers[conv.input[1]].input[1]])
        assert weight_scale.shape == (numpy_helper.to_array(initializers[conv.input[1].removesuffix("__dq")]).shape[0],)
    assert all(numpy_helper.to_array(t).dtype == np.int8 for name, t in initializers.items() if name.endswith("__zero"))
    with torch.inference_mode():
        reference = sigmoid(model(torch.from_numpy(volume[None])).numpy())
    int8 = sigmoid(run_onnxruntime(onnxruntime_session(quantised.SerializeToString()), volume[None]))
    assert np.abs(int8 - reference).mean() < 0.02  # untrained nets: a coarse sanity bound, not a quality claim


@pytest.mark.slow
@pytest.mark.nnunet
def test_calibration_tiles_come_from_the_teacher_cache(phantom_cache):
    from distill.export.tensorrt_build import calibration_tiles_from_cache

    tiles = calibration_tiles_from_cache(phantom_cache, n_tiles=5, tile=(32, 32, 32), seed=0)
    assert len(tiles) == 5 and all(t.shape == (4, 32, 32, 32) and t.dtype == np.float32 for t in tiles)
    assert all(np.any(t != 0) for t in tiles)


def test_int8_needs_calibration_and_precisions_are_checked(exported):
    _, data = exported
    with pytest.raises(EngineError, match="calibration"):
        prepare_onnx(data, "int8")
    with pytest.raises(EngineError, match="unknown precision"):
        prepare_onnx(data, "fp8")
    assert prepare_onnx(data, "fp32") == data


# ---------------------------------------------------------------------------------------------
# Real engines


@pytest.fixture(scope="module")
def trt_package(tmp_path_factory):
    """A package of a ~20k student (skips without the TensorRT builder or a GPU)."""
    from distill.infer.tensorrt_runtime import TensorRTUnavailable, require_tensorrt

    try:
        require_tensorrt()
    except TensorRTUnavailable as exc:
        pytest.skip(f"TensorRT engines cannot be built here: {exc}")
    from distill.export.run import ExportConfig, export_package
    from distill.train.chain import save_untrained_student

    root = tmp_path_factory.mktemp("trt")
    save_untrained_student(root / "run", 20_000)
    return export_package(
        ExportConfig(run_dir=root / "run", out=root / "pkg", n_phantoms=1, tensorrt=("fp32", "fp16"))
    ).package_dir


@pytest.mark.tensorrt
def test_export_builds_gated_fp32_and_fp16_engines(trt_package):
    from distill.package import ModelPackage

    package = ModelPackage.open(trt_package)
    engines = {e.precision: e for e in package.engines}
    assert set(engines) == {"fp32", "fp16"}
    assert engines["fp32"].parity["max_abs_probability"] <= 1e-4 and engines["fp32"].parity["passed"]
    assert engines["fp16"].parity["passed"]
    for entry in engines.values():
        assert (trt_package / entry.file).is_file() and entry.file in package.manifest.files
        assert entry.profile["max"] == list(package.inference.profile_max)
        assert entry.gpu_name == torch.cuda.get_device_name() and entry.rewrite_version == REWRITE_VERSION
        assert entry.calibration_sha256 is None


@pytest.mark.tensorrt
def test_tensorrt_backend_segments_like_torch(trt_package):
    from distill.data.phantoms import PhantomConfig, make_phantom
    from distill.infer.predictor import Predictor

    phantom = make_phantom(5, PhantomConfig(spacing_mm=4.0))
    images = np.stack([phantom.images[m] for m in ("t1", "t1ce", "t2", "flair")]).astype(np.float32)
    reference = Predictor.from_package(trt_package, "torch").segment(images, phantom.affine).labels
    predictor = Predictor.from_package(trt_package, "tensorrt:fp32")
    assert predictor.ready  # warm-up ran on this GPU
    assert np.mean(predictor.segment(images, phantom.affine).labels == reference) >= 0.9999


@pytest.mark.tensorrt
def test_int8_engine_is_built_gated_and_served_from_an_engine_cache(trt_package, tmp_path):
    from distill.export.onnx_export import ParityThresholds
    from distill.export.run import phantom_parity_cases
    from distill.export.tensorrt_build import build_gated_engine
    from distill.infer.predictor import Predictor
    from distill.package import ModelPackage

    package = ModelPackage.open(trt_package)
    cases = phantom_parity_cases(1, 4.0, package.preprocess_config)
    tiles = calibration_tiles([c.images for c in cases], 8, (64, 64, 64))
    # Random weights put many voxels near p = 0.5, where INT8 flips labels: loose marks here.
    built = build_gated_engine(package, "int8", cases, tiles, thresholds=ParityThresholds(0.5, 0.9))
    EngineCache(tmp_path).store(built.key, built.data, built.entry)
    # looked up without the calibration hash
    predictor = Predictor.from_package(trt_package, "tensorrt:int8", engine_cache=tmp_path)
    assert predictor.ready and built.key.file_name.endswith(".engine") and ".int8." in built.key.file_name
    assert built.entry.calibration_sha256 == built.key.calibration_sha256 is not None


@pytest.mark.tensorrt
def test_export_engine_leaves_a_stored_engine_alone_and_builds_into_a_cache(trt_package, tmp_path):
    from distill.export.tensorrt_build import EngineExportConfig, export_engines
    from distill.package import ModelPackage

    before = ModelPackage.open(trt_package).manifest.files
    present = export_engines(EngineExportConfig(package=trt_package, precisions=("fp16",), n_phantoms=1))
    assert [r.built for r in present.engines] == [False]
    cached = export_engines(EngineExportConfig(package=trt_package, precisions=("fp32",), engine_cache=tmp_path,
                                               n_phantoms=1, rebuild=True))  # fmt: skip
    assert cached.engines[0].built and cached.engines[0].path.parent == tmp_path
    assert ModelPackage.open(trt_package).manifest.files == before  # the cache build left the package alone


@pytest.mark.tensorrt
def test_a_missing_engine_is_a_one_line_error_naming_the_command(trt_package, tmp_path):
    from distill.infer.backends import BackendUnavailable
    from distill.infer.predictor import Predictor

    with pytest.raises(
        BackendUnavailable, match="no TensorRT int8 engine.*distill export-engine .* --precision int8"
    ) as caught:
        Predictor.from_package(trt_package, "tensorrt:int8", engine_cache=tmp_path / "empty")
    assert "\n" not in str(caught.value)
