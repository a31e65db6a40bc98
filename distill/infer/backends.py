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
                                             or an engine folder, built beforehand by
                                             ``distill export-engine`` (distill.export.tensorrt_build),
                                             loaded by distill.infer.tensorrt_runtime
===============  ==========================  =====================================================

Packages with the distilled-uncertainty output: the torch and onnxruntime backends also have
``with_uncertainty(images) -> (B, 2K, *S)`` (the logits, then the predicted teacher spread in
[0, 0.5]); TensorRT engines are not built for such packages.

A backend that cannot run here raises :class:`BackendUnavailable` saying what to install or
which command to run. No backend builds anything or writes into a package: a predictor only
reads. The package module, and with it the onnxruntime and TensorRT runtimes
(:mod:`distill.infer.onnxruntime_session`, :mod:`distill.infer.tensorrt_runtime`), is imported
lazily, so the torch backend loads where only torch is installed (``benchmarks/gpu_latency.py``
on a bare GPU machine).
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from distill import __version__
from distill.errors import DistillError

if TYPE_CHECKING:
    from distill.package import ModelPackage

BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEVICES: dict[str, tuple[str, ...]] = {
    "torch": ("cpu", "cuda"),
    "onnxruntime": ("cpu", "cuda", "tensorrt"),
    "tensorrt": ("cuda",),
}
PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "fp16", "bf16"),
    "onnxruntime": ("fp32", "fp16"),
    "tensorrt": ("fp32", "fp16", "int8"),
}
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NORM_MODULES = (nn.InstanceNorm3d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)
ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
ORT_GPU_HINT = (
    "install `onnxruntime-gpu` in place of `onnxruntime` (not beside it: both provide the same module) "
    "on a machine with CUDA"
)


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
        engine_cache: ``tensorrt``: a folder of engines made by ``distill export-engine
            --engine-cache`` (read only); ``onnxruntime:tensorrt``: onnxruntime's own engine
            cache folder (default: one under the user cache folder, see :func:`onnxruntime_trt_cache`).
    """

    name: str = "torch"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    cuda_graphs: bool = False
    compile: bool = False
    engine_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise BackendOptionError(f"unknown backend {self.name!r}; choose one of {', '.join(BACKENDS)}")
        if self.name == "tensorrt" and self.device == "cpu":
            object.__setattr__(self, "device", "cuda")  # TensorRT has one device kind; "cpu" is only the default
        if self.device not in DEVICES[self.name]:
            raise BackendOptionError(
                f"backend {self.name} runs on {', '.join(DEVICES[self.name])}, not {self.device!r}"
            )
        if self.precision not in PRECISIONS[self.name]:
            raise BackendOptionError(
                f"backend {self.name} supports precisions {', '.join(PRECISIONS[self.name])}, not {self.precision!r}"
            )
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
                raise BackendOptionError(
                    f"{text!r}: unknown backend option {token!r} (devices, precisions, graphs, compile)"
                )
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


def one_line(exc: BaseException) -> str:
    """``exc`` as one line for a report row: a Distill error's message, else ``Type: first line``."""
    lines = str(exc).strip().splitlines()
    if isinstance(exc, DistillError) and lines:
        return lines[0]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


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

    def with_uncertainty(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` -> ``(B, 2K, *S)``: logits, then the head's spread ``0.5 sigmoid(z)`` (eager, no graphs)."""
        from distill.students import uncertainty_map

        x = images.to(self.device, self.dtype)
        with torch.inference_mode():
            logits, uncertainty_logits = self.model(x, return_uncertainty=True)
            return torch.cat([logits.float(), uncertainty_map(uncertainty_logits.float())], dim=1)

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


def onnxruntime_trt_cache(spec: BackendSpec, package: ModelPackage) -> Path:
    """The folder onnxruntime's TensorRT provider keeps its engines in, created if missing.

    ``spec.engine_cache`` if given, else ``$XDG_CACHE_HOME/distill/onnxruntime-tensorrt/...``
    (``~/.cache`` without it): never the package, which a predictor does not write into. The
    sub-folders name the onnxruntime and TensorRT versions, the GPU, the ONNX and the precision,
    because the provider names its engine files by graph and compute capability only, and
    reusing an engine across TensorRT versions or models is left to the user to avoid.
    """
    if spec.engine_cache is not None:
        folder = Path(spec.engine_cache)
    else:
        import onnxruntime as ort

        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distill" / "onnxruntime-tensorrt"
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown-gpu"
        runtime = f"ort{ort.__version__}-trt{_tensorrt_libs_version()}-{re.sub(r'[^A-Za-z0-9.]+', '-', gpu)}"
        folder = root / runtime / f"{package.onnx_sha256[:16]}-{spec.precision}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _tensorrt_libs_version() -> str:
    """The TensorRT wheel's version (onnxruntime-gpu loads its libraries), or ``unknown``."""
    from importlib import metadata

    for name in ("tensorrt-cu12-libs", "tensorrt-libs", "tensorrt-cu12", "tensorrt"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def onnxruntime_providers(spec: BackendSpec, package: ModelPackage) -> list[Any]:
    """Execution providers for ``spec``, refusing one this onnxruntime build lacks."""
    from distill.package import INPUT_NAME

    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable(
            f"onnxruntime is not installed ({exc}); install distill[export] or use --backend torch"
        ) from exc
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
        # An empty path is rejected, and onnxruntime then quietly runs the next provider.
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(onnxruntime_trt_cache(spec, package)),
        "trt_profile_min_shapes": shape(settings.profile_min),
        "trt_profile_opt_shapes": shape(settings.profile_opt),
        "trt_profile_max_shapes": shape(settings.profile_max),
    }
    return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]


def check_session_provider(session: Any, wanted: str) -> None:
    """Refuse a session whose first provider is not ``wanted``.

    onnxruntime drops a provider that fails to load (a missing CUDA or TensorRT library, a bad
    option) and carries on with the next one, logging only a warning; the created session's
    ``get_providers()`` says what really runs (``get_available_providers()`` only lists what
    the wheel was built with).
    """
    running = list(session.get_providers())
    if not running or running[0] != wanted:
        raise BackendUnavailable(
            f"onnxruntime did not start {wanted}: the session runs {', '.join(running) or 'nothing'} "
            "(onnxruntime falls back silently when a provider fails to load; its warning above says why); "
            f"refusing to report it as {wanted}"
        )


class OnnxRuntimeBackend:
    """The package's ONNX in onnxruntime; on CUDA providers, inputs and outputs stay on the GPU (I/O binding)."""

    def __init__(self, package: ModelPackage, spec: BackendSpec) -> None:
        from distill.infer.onnxruntime_session import onnxruntime_session

        self.spec = spec
        providers = onnxruntime_providers(spec, package)
        self.device = torch.device("cpu") if spec.device == "cpu" else _require_cuda(spec)
        self.session = onnxruntime_session(package.onnx_path, spec.threads, providers)
        check_session_provider(self.session, ORT_PROVIDERS[spec.device])
        self.out_channels = len(package.regions)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            from distill.infer.onnxruntime_session import run_onnxruntime

            return torch.from_numpy(run_onnxruntime(self.session, images.detach().cpu().numpy()))
        return self._run_bound(images)

    def with_uncertainty(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` -> ``(B, 2K, *S)``: the ``logits`` output, then the ``uncertainty`` output."""
        from distill.package import INPUT_NAME, OUTPUT_NAME, UNCERTAINTY_NAME

        if self.device.type != "cpu":
            return torch.cat(self._run_bound(images, (OUTPUT_NAME, UNCERTAINTY_NAME)), dim=1)
        feed = {INPUT_NAME: np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)}
        logits, uncertainty = self.session.run([OUTPUT_NAME, UNCERTAINTY_NAME], feed)
        return torch.from_numpy(np.concatenate([logits, uncertainty], axis=1))

    def _run_bound(self, images: torch.Tensor, outputs: Sequence[str] | None = None) -> Any:
        """One run with inputs and ``outputs`` (default: the logits alone, returned as one tensor) on the GPU."""
        from distill.package import INPUT_NAME, OUTPUT_NAME

        x = images.to(self.device, torch.float32).contiguous()
        names = tuple(outputs or (OUTPUT_NAME,))
        ys = [torch.empty((x.shape[0], self.out_channels, *x.shape[2:]), dtype=torch.float32, device=self.device)
              for _ in names]  # fmt: skip
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input(INPUT_NAME, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        for name, y in zip(names, ys):
            binding.bind_output(name, "cuda", index, np.float32, tuple(y.shape), y.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # onnxruntime runs on its own stream
        self.session.run_with_iobinding(binding)
        return ys if outputs is not None else ys[0]

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
    """A TensorRT engine made for this GPU, TensorRT version and profile, from the package or an engine folder.

    It only loads: engines are built by ``distill export-engine`` (or ``distill export
    --tensorrt``), never here, so a predictor neither runs for minutes on first use nor writes
    into the package it serves.
    """

    def __init__(self, package: ModelPackage, spec: BackendSpec) -> None:
        from distill.infer import tensorrt_runtime as trt_runtime

        self.spec = spec
        try:
            key = trt_runtime.current_engine_key(package, spec.precision)
        except trt_runtime.TensorRTUnavailable as exc:
            raise BackendUnavailable(str(exc)) from exc
        cache = trt_runtime.EngineCache(spec.engine_cache) if spec.engine_cache else None
        found = trt_runtime.find_engine(package, key, cache)
        if found is None:
            held = ", ".join(trt_runtime.describe_engines(package.engines)) or "none"
            command = f"distill export-engine {package.root} --precision {spec.precision}"
            if spec.engine_cache:
                command += f" --engine-cache {spec.engine_cache}"
            raise BackendUnavailable(
                f"{package.root}: no TensorRT {key.describe()} (the package holds: {held}); build one on this machine "
                f"with `{command}`"
            )
        self.runner = trt_runtime.TensorRTRunner(found)
        self.device = self.runner.device
        self.tensorrt_version = key.tensorrt_version

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


def available_backend_specs(threads: int | None = None, engine_cache: Path | None = None) -> list[BackendSpec]:
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
        from distill.infer.tensorrt_runtime import tensorrt_available

        if tensorrt_available():
            specs += [BackendSpec("tensorrt", "cuda", p, engine_cache=engine_cache) for p in ("fp32", "fp16")]
    return specs


# ---------------------------------------------------------------------------------------------
# Timing (here rather than in distill.infer.bench so that model-only timing needs torch alone)


def time_calls(fn: Callable[[], Any], runs: int, warmup: int, synchronize: Callable[[], None]) -> list[float]:
    """Wall seconds of ``runs`` calls of ``fn`` after ``warmup`` untimed ones; device work included."""
    for _ in range(warmup):
        fn()
    synchronize()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize()
        samples.append(time.perf_counter() - start)
    return samples


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """n, p50/p95/p99, mean, min, max of ``seconds``, in milliseconds (linear-interpolated percentiles)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": int(ms.size), "p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(float(ms.mean()), 3),
            "min_ms": round(float(ms.min()), 3), "max_ms": round(float(ms.max()), 3)}  # fmt: skip


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "distill": __version__,
                                       "numpy": np.__version__, "torch": torch.__version__}  # fmt: skip
    for module in ("onnx", "onnxruntime", "tensorrt"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    return versions


__all__ = [
    "BACKENDS", "Backend", "BackendOptionError", "BackendSpec", "BackendUnavailable", "OnnxRuntimeBackend",
    "TensorRTBackend", "TorchBackend", "available_backend_specs", "check_session_provider", "cpu_name",
    "create_backend", "device_name", "keep_norms_fp32", "latency_stats", "library_versions", "one_line",
    "onnxruntime_providers",
    "onnxruntime_trt_cache", "time_calls",
]  # fmt: skip
