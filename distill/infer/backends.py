"""Inference backends behind one small interface: torch, onnxruntime and TensorRT.

A backend maps a float32 batch ``(B, C, X, Y, Z)`` (a torch tensor, on any device) to
float32 logits ``(B, K, X, Y, Z)`` on :attr:`Backend.device`; the predictor does everything
else (preprocessing, tiling, thresholds, label mapping) the same way for all of them.

===============  ==========================  =====================================================
backend          devices                     options
===============  ==========================  =====================================================
``torch``        ``cpu``, ``cuda``           ``fp32`` / ``fp16`` / ``bf16`` (norms stay FP32),
                                             CUDA graphs (cuda only), ``torch.compile``
``onnxruntime``  ``cpu``, ``cuda``,          ``cuda`` and ``tensorrt`` are onnxruntime execution
                 ``tensorrt``                providers (``onnxruntime-gpu``); ``fp16`` with the
                                             TensorRT provider only
``tensorrt``     ``cuda``                    ``fp32`` / ``fp16`` / ``int8`` engines from the package
                                             or an engine cache (see distill.export.tensorrt_build)
===============  ==========================  =====================================================

A backend that cannot run here raises :class:`BackendUnavailable` saying what to install.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from distill.errors import DistillError
from distill.package import INPUT_NAME, OUTPUT_NAME, ModelPackage

BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEVICES: dict[str, tuple[str, ...]] = {"torch": ("cpu", "cuda"), "onnxruntime": ("cpu", "cuda", "tensorrt"), "tensorrt": ("cuda",)}
PRECISIONS: dict[str, tuple[str, ...]] = {"torch": ("fp32", "fp16", "bf16"), "onnxruntime": ("fp32", "fp16"), "tensorrt": ("fp32", "fp16", "int8")}
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NORM_MODULES = (nn.InstanceNorm3d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)
ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
ORT_GPU_HINT = "install `onnxruntime-gpu` in place of `onnxruntime` (not beside it: both provide the same module) on a machine with CUDA"


class BackendUnavailable(DistillError):
    """The requested backend, device or option cannot run here."""


class BackendOptionError(DistillError):
    """A backend option combination that does not exist (e.g. CUDA graphs on the CPU)."""


@dataclass(frozen=True)
class BackendSpec:
    """Which backend and how to run it.

    Attributes:
        name: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        device: ``"cpu"`` or ``"cuda"``; for onnxruntime the execution provider
            (``"cpu"``, ``"cuda"``, ``"tensorrt"``); TensorRT always ``"cuda"``.
        precision: ``"fp32"``, ``"fp16"``, ``"bf16"`` (torch) or ``"int8"`` (TensorRT).
        threads: CPU intra-op threads (torch: process-wide ``torch.set_num_threads``).
        cuda_graphs: torch on CUDA: capture one CUDA graph per input shape and replay it.
        compile: torch: run through ``torch.compile`` (first call per shape compiles).
        engine_cache: TensorRT: folder for engines built outside the package.
        build_engine: TensorRT: build a missing engine here (minutes; parity-gated on phantoms).
    """

    name: str = "torch"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    cuda_graphs: bool = False
    compile: bool = False
    engine_cache: Path | None = None
    build_engine: bool = False

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise BackendOptionError(f"unknown backend {self.name!r}; choose one of {', '.join(BACKENDS)}")
        if self.name == "tensorrt" and self.device == "cpu":
            object.__setattr__(self, "device", "cuda")  # TensorRT has one device kind; "cpu" is only the default
        if self.device not in DEVICES[self.name]:
            raise BackendOptionError(f"backend {self.name} runs on {', '.join(DEVICES[self.name])}, not {self.device!r}")
        if self.precision not in PRECISIONS[self.name]:
            raise BackendOptionError(f"backend {self.name} supports precisions {', '.join(PRECISIONS[self.name])}, not {self.precision!r}")
        if self.cuda_graphs and (self.name != "torch" or self.device != "cuda"):
            raise BackendOptionError("CUDA graphs are a torch option on --device cuda")
        if self.compile and self.name != "torch":
            raise BackendOptionError("torch.compile is a torch backend option")
        if self.name == "onnxruntime" and self.precision == "fp16" and self.device != "tensorrt":
            raise BackendOptionError("onnxruntime runs fp16 only through its TensorRT provider (--device tensorrt)")

    @property
    def label(self) -> str:
        """Short name for reports, e.g. ``torch-cuda-fp16+graphs``."""
        extras = "".join(f"+{flag}" for flag, on in (("graphs", self.cuda_graphs), ("compile", self.compile)) if on)
        return f"{self.name}-{self.device}-{self.precision}{extras}"

    @classmethod
    def parse(cls, text: str, **defaults: Any) -> BackendSpec:
        """``"torch"``, ``"torch:cuda:fp16:graphs"``, ``"onnxruntime:cuda"``, ``"tensorrt:int8"``, ``"torch:compile"``.

        The first field is the backend; the others, in any order, are a device, a precision,
        ``graphs`` or ``compile``. ``defaults`` fill the remaining fields (threads, caches).
        """
        name, *tokens = [t.strip().lower() for t in text.split(":") if t.strip()] or ["torch"]
        fields: dict[str, Any] = dict(defaults)
        devices = {d for ds in DEVICES.values() for d in ds}
        precisions = {p for ps in PRECISIONS.values() for p in ps}
        for token in tokens:
            if token in devices:
                fields["device"] = token
            elif token in precisions:
                fields["precision"] = token
            elif token == "graphs":
                fields["cuda_graphs"] = True
            elif token == "compile":
                fields["compile"] = True
            else:
                raise BackendOptionError(f"{text!r}: unknown backend option {token!r} (devices, precisions, graphs, compile)")
        return cls(name=name, **fields)


class Backend(Protocol):
    """What the predictor needs from a backend."""

    spec: BackendSpec
    device: torch.device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` float32 -> logits ``(B, K, *S)`` float32 on :attr:`device`."""

    def fits(self, shape: Sequence[int]) -> bool:
        """Whether one call can take an input of ``shape`` (TensorRT: inside the engine profile)."""

    def synchronize(self) -> None:
        """Wait for queued device work (for timing)."""

    def describe(self) -> dict[str, Any]:
        """Backend, device string, threads and versions, for reports."""


def device_name(device: torch.device) -> str:
    """The processor or GPU a device is, e.g. ``"NVIDIA H100 80GB HBM3"``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _require_cuda(spec: BackendSpec) -> torch.device:
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"backend {spec.label} needs a CUDA GPU, and torch {torch.__version__} sees none here; "
            "use --device cpu, or run on a machine with an NVIDIA GPU and a CUDA build of torch"
        )
    return torch.device("cuda", torch.cuda.current_device())


# ---------------------------------------------------------------------------------------------
# torch


def keep_norms_fp32(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``model`` to ``dtype`` but keep norm layers (and their inputs and outputs) in FP32.

    Instance-norm statistics over a whole volume lose precision in FP16/BF16; the cast back
    after the norm keeps the surrounding convs in the low precision.
    """
    model.to(dtype)
    for module in model.modules():
        if isinstance(module, NORM_MODULES):
            module.float()
            module.register_forward_pre_hook(lambda _m, args: (args[0].float(), *args[1:]))
            module.register_forward_hook(lambda _m, _args, out, dtype=dtype: out.to(dtype))
    return model


class TorchBackend:
    """The student itself, on CPU or CUDA, optionally in FP16/BF16, with CUDA graphs or ``torch.compile``."""

    def __init__(self, model: nn.Module, spec: BackendSpec) -> None:
        self.spec = spec
        self.device = _require_cuda(spec) if spec.device == "cuda" else torch.device("cpu")
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.dtype = TORCH_DTYPES[spec.precision]
        model = model.eval().to(self.device)
        if self.dtype != torch.float32:
            keep_norms_fp32(model, self.dtype)
        self.model = model
        self._forward = torch.compile(model, dynamic=False) if spec.compile else model
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.dtype)
        with torch.inference_mode():
            logits = self._replay(x) if self.spec.cuda_graphs else self._forward(x)
        return logits.float()

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        """Run through the CUDA graph captured for ``x.shape`` (captured on first use)."""
        if tuple(x.shape) not in self._graphs:
            self._graphs[tuple(x.shape)] = self._capture(x)
        graph, static_in, static_out = self._graphs[tuple(x.shape)]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor):
        static_in = x.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up runs off the capture stream, as capture requires
            for _ in range(2):
                self._forward(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._forward(static_in)
        return graph, static_in, static_out

    def fits(self, shape: Sequence[int]) -> bool:
        return True

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.spec.label, "device": device_name(self.device), "threads": torch.get_num_threads(),
                "versions": {"torch": torch.__version__}}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# onnxruntime


def onnxruntime_providers(spec: BackendSpec, package: ModelPackage) -> list[Any]:
    """Execution providers for ``spec``, refusing one this onnxruntime build lacks."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed ({exc}); install distill[export] or use --backend torch") from exc
    wanted = ORT_PROVIDERS[spec.device]
    if wanted not in ort.get_available_providers():
        raise BackendUnavailable(
            f"onnxruntime {ort.__version__} here has no {wanted} (it has {', '.join(ort.get_available_providers())}); "
            f"{ORT_GPU_HINT}, or use --device cpu"
        )
    if spec.device == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": torch.cuda.current_device() if torch.cuda.is_available() else 0})
    if spec.device == "cuda":
        return [cuda, "CPUExecutionProvider"]
    settings = package.inference

    def shape(values: Sequence[int]) -> str:
        return f"{INPUT_NAME}:" + "x".join(str(v) for v in values)

    trt_options = {
        "trt_fp16_enable": spec.precision == "fp16",
        "trt_engine_cache_enable": spec.engine_cache is not None,
        "trt_engine_cache_path": str(spec.engine_cache or ""),
        "trt_profile_min_shapes": shape(settings.profile_min),
        "trt_profile_opt_shapes": shape(settings.profile_opt),
        "trt_profile_max_shapes": shape(settings.profile_max),
    }
    return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """The package's ONNX in onnxruntime; on CUDA providers, inputs and outputs stay on the GPU (I/O binding)."""

    def __init__(self, package: ModelPackage, spec: BackendSpec) -> None:
        from distill.export.onnx_export import onnxruntime_session

        self.spec = spec
        providers = onnxruntime_providers(spec, package)
        self.device = torch.device("cpu") if spec.device == "cpu" else _require_cuda(spec)
        self.session = onnxruntime_session(package.onnx_path, spec.threads, providers)
        self.out_channels = len(package.regions)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            from distill.export.onnx_export import run_onnxruntime

            return torch.from_numpy(run_onnxruntime(self.session, images.detach().cpu().numpy()))
        return self._run_bound(images)

    def _run_bound(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32).contiguous()
        y = torch.empty((x.shape[0], self.out_channels, *x.shape[2:]), dtype=torch.float32, device=self.device)
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input(INPUT_NAME, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", index, np.float32, tuple(y.shape), y.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # onnxruntime runs on its own stream
        self.session.run_with_iobinding(binding)
        return y

    def fits(self, shape: Sequence[int]) -> bool:
        return True

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"backend": self.spec.label, "device": device_name(self.device), "threads": self.spec.threads,
                "providers": self.session.get_providers(), "versions": {"onnxruntime": ort.__version__}}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# TensorRT


class TensorRTBackend:
    """A TensorRT engine for this GPU and TensorRT version: from the package, an engine cache, or built here."""

    def __init__(self, package: ModelPackage, spec: BackendSpec) -> None:
        from distill.export import tensorrt_build as trt_build

        self.spec = spec
        try:
            key = trt_build.current_engine_key(spec.precision, package.onnx_sha256)
        except trt_build.TensorRTUnavailable as exc:
            raise BackendUnavailable(str(exc)) from exc
        cache = trt_build.EngineCache(spec.engine_cache) if spec.engine_cache else None
        engine = trt_build.find_engine(package, key, cache)
        if engine is None:
            engine = self._build(package, key, cache)
        self.runner = trt_build.TensorRTRunner(engine)
        self.device = self.runner.device
        self.tensorrt_version = key.tensorrt_version

    def _build(self, package: ModelPackage, key, cache) -> bytes:
        from distill.export import tensorrt_build as trt_build
        from distill.export.run import phantom_parity_cases

        if not self.spec.build_engine:
            engines = trt_build.describe_engines(package.engines)
            held = ", ".join(f"{e['precision']} sm{e['compute_capability']} TRT {e['tensorrt']}" for e in engines)
            raise BackendUnavailable(
                f"{package.root}: no TensorRT {key.precision} engine for compute capability {key.compute_capability} and "
                f"TensorRT {key.tensorrt_version} (the package holds: {held or 'none'}); allow building one here "
                "(--build-engine, a few minutes), export with --tensorrt on this machine, or use another backend"
            )
        cases = phantom_parity_cases(2, 4.0, package.preprocess_config)
        tiles = trt_build.calibration_tiles([c.images for c in cases], 16, (64, 64, 64)) if key.precision == "int8" else None
        built = trt_build.build_gated_engine(package, key.precision, cases, tiles, threads=self.spec.threads)
        if cache is not None:
            cache.store(key, built.data, built.entry)
        else:
            try:
                package.add_engine(key.file_name, built.data, built.entry)
            except OSError as exc:
                raise BackendUnavailable(f"{package.root}: cannot store the new engine ({exc}); pass an engine cache folder") from exc
        return built.data

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.runner(images)

    def fits(self, shape: Sequence[int]) -> bool:
        return self.runner.fits(shape)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.spec.label, "device": device_name(self.device), "threads": None,
                "versions": {"tensorrt": self.tensorrt_version, "torch": torch.__version__}}  # fmt: skip


def create_backend(package: ModelPackage, spec: BackendSpec) -> Backend:
    """The backend ``spec`` names, for ``package``; :class:`BackendUnavailable` when it cannot run here."""
    if spec.name == "torch":
        return TorchBackend(package.load_student(), spec)
    if spec.name == "onnxruntime":
        return OnnxRuntimeBackend(package, spec)
    return TensorRTBackend(package, spec)


def available_backend_specs(threads: int | None = None) -> list[BackendSpec]:
    """The backends worth comparing on this machine, CPU first (for ``distill bench`` without ``--backend``)."""
    specs = [BackendSpec("torch", threads=threads), BackendSpec("onnxruntime", threads=threads)]
    if torch.cuda.is_available():
        specs += [BackendSpec("torch", "cuda"), BackendSpec("torch", "cuda", "fp16"),
                  BackendSpec("torch", "cuda", "fp16", cuda_graphs=True)]  # fmt: skip
        try:
            import onnxruntime as ort

            if ORT_PROVIDERS["cuda"] in ort.get_available_providers():
                specs.append(BackendSpec("onnxruntime", "cuda"))
        except ImportError:
            pass
        from distill.export.tensorrt_build import tensorrt_available

        if tensorrt_available():
            specs += [BackendSpec("tensorrt", "cuda", "fp32"), BackendSpec("tensorrt", "cuda", "fp16")]
    return specs


__all__ = [
    "BACKENDS", "Backend", "BackendOptionError", "BackendSpec", "BackendUnavailable", "OnnxRuntimeBackend",
    "TensorRTBackend", "TorchBackend", "available_backend_specs", "cpu_name", "create_backend", "device_name",
    "keep_norms_fp32",
]  # fmt: skip
