"""GPU backend bookkeeping, checked on the CPU against fakes of TensorRT's and onnxruntime's Python interfaces.

What the fakes stand for: ``tensorrt`` (logger, runtime, builder, engine, execution context
with its ``bool`` returns) and a CUDA device (name, capability, streams). They check what
Distill does with those interfaces (engine keys and lookup, one logger, a private stream,
refused calls, no writes into a package, the onnxruntime provider options and fallback
check, one failing backend in ``distill bench``), not TensorRT itself: the ``tensorrt``-marked
tests in tests/integration/test_tensorrt.py do that on a GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import shutil
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from distill.export import tensorrt_build as trt_build
from distill.export.tensorrt_build import BuiltEngine
from distill.infer import tensorrt_runtime as trt_runtime
from distill.infer.backends import (
    BackendSpec,
    BackendUnavailable,
    OnnxRuntimeBackend,
    TensorRTBackend,
    check_session_provider,
    one_line,
    onnxruntime_providers,
)
from distill.infer.bench import BenchResult, bench_each
from distill.infer.tensorrt_runtime import EngineCache, EngineError, EngineKey, TensorRTRunner
from distill.package import EngineEntry, ModelPackage

PROFILE = ((1, 4, 8, 8, 8), (1, 4, 16, 16, 16), (1, 4, 64, 64, 64))


# ---------------------------------------------------------------------------------------------
# Fakes


class FakeContext:
    def __init__(self) -> None:
        self.refuse: str | None = None  # the call that returns False
        self.shape: tuple[int, ...] = ()
        self.streams: list[int] = []

    def set_input_shape(self, name, shape) -> bool:
        self.shape = tuple(shape)
        return self.refuse != "set_input_shape"

    def get_tensor_shape(self, name):
        return (self.shape[0], 3, *self.shape[2:])

    def set_tensor_address(self, name, pointer) -> bool:
        return self.refuse != "set_tensor_address"

    def execute_async_v3(self, stream_handle) -> bool:
        self.streams.append(stream_handle)
        return self.refuse != "execute_async_v3"


class FakeEngine:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def get_tensor_profile_shape(self, name, index):
        return PROFILE

    def create_execution_context(self):
        return FakeContext()


def fake_tensorrt_module():
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0.34"
    trt.made = types.SimpleNamespace(loggers=[], runtimes=[], builders=[], parsers=[])

    class Logger:
        WARNING = "warning"

        def __init__(self, level) -> None:
            trt.made.loggers.append(self)

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger = logger
            trt.made.runtimes.append(self)

        def deserialize_cuda_engine(self, data):
            return FakeEngine(data)

    class Builder:
        def __init__(self, logger) -> None:
            self.logger = logger
            trt.made.builders.append(self)

        def create_network(self, flags):
            return types.SimpleNamespace(num_layers=0)

        def create_builder_config(self):
            return types.SimpleNamespace(set_memory_pool_limit=lambda *a: None, clear_flag=lambda *a: None,
                                         add_optimization_profile=lambda *a: None)  # fmt: skip

        def create_optimization_profile(self):
            return types.SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, network, config):
            return b"serialized-engine"

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.logger = logger
            trt.made.parsers.append(self)

        def parse(self, data) -> bool:
            return True

    trt.Logger, trt.Runtime, trt.Builder, trt.OnnxParser = Logger, Runtime, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.BuilderFlag = types.SimpleNamespace(TF32=0)
    trt.LayerType = types.SimpleNamespace(NORMALIZATION="normalization")
    trt.float32 = "float32"
    return trt


class FakeStream:
    handles = itertools.count(1000)

    def __init__(self, device=None) -> None:
        self.cuda_stream = next(self.handles)
        self.waited_for: list[FakeStream] = []

    def wait_stream(self, other) -> None:
        self.waited_for.append(other)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A fake ``tensorrt`` module and a fake CUDA device named "Fake GPU" (compute capability 9.0)."""
    trt = fake_tensorrt_module()
    caller = FakeStream()
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    monkeypatch.setattr(trt_runtime, "_LOGGER", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: caller)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    trt.caller_stream = caller
    return trt


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory) -> Path:
    from test_package import write_student_run, write_tiny_cases

    from distill.export.run import ExportConfig, export_package

    root = tmp_path_factory.mktemp("backends")
    run = write_student_run(root / "run")
    return export_package(
        ExportConfig(run_dir=run, out=root / "pkg", held_out=write_tiny_cases(root / "held_out"))
    ).package_dir


@pytest.fixture
def package_copy(package_dir, tmp_path) -> Path:
    return Path(shutil.copytree(package_dir, tmp_path / "copy"))


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def an_entry(key: EngineKey) -> EngineEntry:
    return EngineEntry(file=f"engines/{key.file_name}", compute_capability=key.compute_capability,
                       tensorrt_version=key.tensorrt_version, precision=key.precision, onnx_sha256=key.onnx_sha256,
                       profile={"min": list(key.profile[0]), "opt": list(key.profile[1]), "max": list(key.profile[2])},
                       parity={"passed": True})  # fmt: skip


BASE_KEY = EngineKey("fp16", "ab" * 32, PROFILE, "NVIDIA H200", "9.0", "10.9.0.34")


# ---------------------------------------------------------------------------------------------
# Engine keys and the engine cache


@pytest.mark.parametrize("change", [
    {"precision": "fp32"}, {"onnx_sha256": "cd" * 32}, {"profile": (PROFILE[0], PROFILE[1], (1, 4, 96, 96, 96))},
    {"gpu_name": "NVIDIA A100-SXM4-80GB"}, {"compute_capability": "8.0"}, {"tensorrt_version": "10.13.0.35"},
    {"rewrite_version": trt_runtime.REWRITE_VERSION + 1},
])  # fmt: skip
def test_every_field_that_changes_an_engine_changes_its_name(change):
    other = replace(BASE_KEY, **change)
    assert other.file_name != BASE_KEY.file_name
    assert not BASE_KEY.matches_file(other.file_name) and not other.matches_file(BASE_KEY.file_name)


def test_int8_engines_are_named_by_calibration_and_found_without_knowing_it():
    calibrated = replace(BASE_KEY, precision="int8", calibration_sha256="12" * 32)
    lookup = replace(calibrated, calibration_sha256=None)  # what a predictor knows
    assert calibrated.file_name.startswith("model.sm90.trt10.9.0.34.int8.") and ".cal121212" in calibrated.file_name
    assert lookup.matches_file(calibrated.file_name)
    assert not replace(calibrated, calibration_sha256="34" * 32).matches_file(calibrated.file_name)
    assert trt_build.calibration_sha256([torch.zeros(4, 8, 8, 8).numpy()]) != trt_build.calibration_sha256(
        [torch.ones(4, 8, 8, 8).numpy()]
    )


def test_engine_entries_record_the_whole_key_only_when_known():
    old = an_entry(BASE_KEY)  # as packages written before these fields hold it
    assert {"gpu_name", "rewrite_version", "calibration_sha256"}.isdisjoint(old.to_dict())
    assert EngineEntry(**old.to_dict()) == old
    full = replace(
        old, gpu_name=BASE_KEY.gpu_name, rewrite_version=BASE_KEY.rewrite_version, calibration_sha256="12" * 32
    )
    assert full.to_dict()["gpu_name"] == "NVIDIA H200" and EngineEntry(**full.to_dict()) == full


def test_engine_cache_finds_its_engines_and_refuses_an_altered_one(tmp_path):
    cache = EngineCache(tmp_path)
    assert cache.load(BASE_KEY) is None
    path = cache.store(BASE_KEY, b"engine-bytes", an_entry(BASE_KEY))
    assert path.name == BASE_KEY.file_name and cache.load(BASE_KEY) == b"engine-bytes"
    assert cache.load(replace(BASE_KEY, tensorrt_version="10.13.0.35")) is None
    path.write_bytes(b"tampered")
    with pytest.raises(EngineError, match="sha256"):
        cache.load(BASE_KEY)


# ---------------------------------------------------------------------------------------------
# The TensorRT backend only loads


def test_without_a_matching_engine_the_backend_names_the_command_and_writes_nothing(package_copy, fake_gpu, tmp_path):
    before = file_hashes(package_copy)
    package = ModelPackage.open(package_copy)
    with pytest.raises(BackendUnavailable) as caught:
        TensorRTBackend(package, BackendSpec("tensorrt", precision="fp16", engine_cache=tmp_path / "engines"))
    message = str(caught.value)
    assert (
        "\n" not in message
        and "no TensorRT fp16 engine for Fake GPU (compute capability 9.0), TensorRT 10.9.0.34" in message
    )
    assert f"`distill export-engine {package_copy} --precision fp16 --engine-cache {tmp_path / 'engines'}`" in message
    assert file_hashes(package_copy) == before
    assert not (tmp_path / "engines").exists()


def test_the_backend_loads_the_matching_engine_from_an_engine_folder(package_dir, fake_gpu, tmp_path):
    package = ModelPackage.open(package_dir)
    key = trt_runtime.current_engine_key(package, "fp16")
    EngineCache(tmp_path).store(replace(key, tensorrt_version="10.8.0.43"), b"other-version", an_entry(key))
    EngineCache(tmp_path).store(key, b"this-gpu-engine", an_entry(key))
    backend = TensorRTBackend(package, BackendSpec("tensorrt", precision="fp16", engine_cache=tmp_path))
    assert backend.runner.engine.data == b"this-gpu-engine"


def test_builders_and_runtimes_share_one_tensorrt_logger(fake_gpu, package_dir):
    settings = ModelPackage.open(package_dir).inference
    assert trt_build.build_engine(b"onnx", "fp32", settings) == b"serialized-engine"
    TensorRTRunner(b"a")
    TensorRTRunner(b"b")
    made = fake_gpu.made
    assert len(made.loggers) == 1
    assert {id(x.logger) for x in (*made.builders, *made.parsers, *made.runtimes)} == {id(made.loggers[0])}


def test_the_runner_queues_on_its_own_stream_and_orders_with_the_caller(fake_gpu):
    runner = TensorRTRunner(b"engine")
    runner.device = torch.device("cpu")  # the fake device: tensors stay on the CPU
    logits = runner(torch.zeros(1, 4, 16, 16, 8))
    assert logits.shape == (1, 3, 16, 16, 8)
    assert runner.context.streams == [runner.stream.cuda_stream] != [fake_gpu.caller_stream.cuda_stream]
    assert runner.stream.waited_for == [fake_gpu.caller_stream] and fake_gpu.caller_stream.waited_for == [runner.stream]


@pytest.mark.parametrize("call, message", [("set_input_shape", "refused input shape"),
                                           ("set_tensor_address", "refused the address of tensor 'images'"),
                                           ("execute_async_v3", "failed to queue the engine")])  # fmt: skip
def test_every_refused_tensorrt_call_is_an_error(fake_gpu, call, message):
    runner = TensorRTRunner(b"engine")
    runner.device = torch.device("cpu")
    runner.context.refuse = call
    with pytest.raises(EngineError, match=message):
        runner(torch.zeros(1, 4, 16, 16, 16))


# ---------------------------------------------------------------------------------------------
# Building lives in distill.export


def fake_built(
    package: ModelPackage, precision: str, cases, calibration=None, thresholds=None, threads=None
) -> BuiltEngine:
    key = trt_runtime.current_engine_key(package, precision)
    return BuiltEngine(key=key, data=f"{precision}-engine".encode(), entry=an_entry(key), parity={"passed": True})


def test_build_engines_stores_in_the_package_once_unless_asked_again(package_copy, fake_gpu, monkeypatch):
    builds = []
    monkeypatch.setattr(trt_build, "build_gated_engine", lambda *a, **k: builds.append(a[1]) or fake_built(*a, **k))
    package = ModelPackage.open(package_copy)
    first = trt_build.build_engines(package, ["fp16"], [])
    assert first[0].built and first[0].path.read_bytes() == b"fp16-engine"
    assert [e.file for e in ModelPackage.open(package_copy).engines] == [f"engines/{first[0].path.name}"]
    again = trt_build.build_engines(ModelPackage.open(package_copy), ["fp16"], [])
    assert not again[0].built and again[0].path == first[0].path
    trt_build.build_engines(ModelPackage.open(package_copy), ["fp16"], [], rebuild=True)
    assert builds == ["fp16", "fp16"]
    assert len(ModelPackage.open(package_copy).engines) == 1  # replaced, not duplicated


def test_build_engines_into_an_engine_folder_leaves_the_package_alone(package_copy, fake_gpu, monkeypatch, tmp_path):
    monkeypatch.setattr(trt_build, "build_gated_engine", fake_built)
    before = file_hashes(package_copy)
    records = trt_build.build_engines(ModelPackage.open(package_copy), ["fp32"], [], cache=EngineCache(tmp_path))
    assert records[0].path.parent == tmp_path and file_hashes(package_copy) == before
    backend = TensorRTBackend(
        ModelPackage.open(package_copy), BackendSpec("tensorrt", precision="fp32", engine_cache=tmp_path)
    )
    assert backend.runner.engine.data == b"fp32-engine"


# ---------------------------------------------------------------------------------------------
# onnxruntime's TensorRT provider


def test_onnxruntime_tensorrt_gets_a_real_engine_cache_outside_the_package(package_dir, monkeypatch, tmp_path):
    import onnxruntime

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                 "CPUExecutionProvider"])  # fmt: skip
    package = ModelPackage.open(package_dir)
    providers = onnxruntime_providers(BackendSpec("onnxruntime", "tensorrt", "fp16"), package)
    name, options = providers[0]
    folder = Path(options["trt_engine_cache_path"])
    assert name == "TensorrtExecutionProvider" and options["trt_engine_cache_enable"] and options["trt_fp16_enable"]
    assert (
        folder.is_dir()
        and (tmp_path / "cache") in folder.parents
        and package_dir.resolve() not in folder.resolve().parents
    )
    assert folder.name == f"{package.onnx_sha256[:16]}-fp16"
    chosen = onnxruntime_providers(BackendSpec("onnxruntime", "tensorrt", engine_cache=tmp_path / "mine"), package)
    assert chosen[0][1]["trt_engine_cache_path"] == str(tmp_path / "mine") and (tmp_path / "mine").is_dir()


class FakeSession:
    def __init__(self, providers) -> None:
        self.providers = providers

    def get_providers(self):
        return self.providers


def test_a_session_that_fell_back_to_another_provider_is_refused():
    check_session_provider(
        FakeSession(["TensorrtExecutionProvider", "CUDAExecutionProvider"]), "TensorrtExecutionProvider"
    )
    with pytest.raises(
        BackendUnavailable, match="did not start TensorrtExecutionProvider: the session runs CUDAExecutionProvider"
    ):
        check_session_provider(
            FakeSession(["CUDAExecutionProvider", "CPUExecutionProvider"]), "TensorrtExecutionProvider"
        )


def test_the_onnxruntime_backend_checks_the_created_session(package_dir, monkeypatch):
    import onnxruntime

    from distill.infer import backends
    from distill.infer import onnxruntime_session as ort_session

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(backends, "_require_cuda", lambda spec: torch.device("cpu"))
    monkeypatch.setattr(ort_session, "onnxruntime_session", lambda *a, **k: FakeSession(["CPUExecutionProvider"]))
    with pytest.raises(BackendUnavailable, match="did not start CUDAExecutionProvider"):
        OnnxRuntimeBackend(ModelPackage.open(package_dir), BackendSpec("onnxruntime", "cuda"))
    monkeypatch.undo()
    assert (
        OnnxRuntimeBackend(ModelPackage.open(package_dir), BackendSpec("onnxruntime")).session.get_providers()[0]
        == "CPUExecutionProvider"
    )


# ---------------------------------------------------------------------------------------------
# distill bench


def test_one_failing_backend_is_a_row_and_the_others_still_run():
    specs = [BackendSpec("torch"), BackendSpec("onnxruntime"), BackendSpec("torch", precision="bf16")]

    def bench(spec):
        if spec.name == "onnxruntime":
            raise RuntimeError("CUDA error: an illegal memory access\nCUDA kernel errors might be reported later")
        return {"backend": spec.label, "model_only": {"p50_ms": 1.0}, "end_to_end": {"total": {"p50_ms": 2.0}}}

    rows = bench_each(specs, bench)
    assert [r["backend"] for r in rows] == ["torch-cpu-fp32", "onnxruntime-cpu-fp32", "torch-cpu-bf16"]
    assert rows[1] == {
        "backend": "onnxruntime-cpu-fp32",
        "failed": "RuntimeError: CUDA error: an illegal memory access",
    }
    table = BenchResult({"results": rows}, None).table()
    assert "onnxruntime-cpu-fp32" in table and "failed: RuntimeError: CUDA error" in table and table.count("\n") == 3


def test_one_line_keeps_distill_messages_and_names_other_errors():
    assert one_line(BackendUnavailable("no engine\nsecond line")) == "no engine"
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(OSError("disk full")) == "OSError: disk full"


# ---------------------------------------------------------------------------------------------
# distill export-engine


def test_export_engine_without_tensorrt_is_a_one_line_error(package_dir, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from distill.cli_infer import register
    from distill.infer.tensorrt_runtime import TensorRTUnavailable

    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)  # import fails as where it is not installed
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["export-engine", str(package_dir), "--precision", "fp16"])
    assert isinstance(result.exception, TensorRTUnavailable)
    assert "TensorRT 10" in str(result.exception) and "\n" not in str(result.exception)
    assert not (package_dir / "engines").exists()
