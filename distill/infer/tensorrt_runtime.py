"""TensorRT at run time: load an engine, run it, and find the one made for this GPU.

What a predictor needs to use an engine that ``distill export-engine`` (or ``distill export
--tensorrt``, :mod:`distill.export.tensorrt_build`) built, and nothing that builds: engines
are built only there, the TensorRT backend (:class:`distill.infer.backends.TensorRTBackend`)
only looks them up, and a runner is declared ready only after a warm-up inference succeeded.
The build module imports its keys, cache, logger and runner from here, so one owner names
and runs every engine.

Everything that touches ``tensorrt`` is guarded: importing this module never needs it, and
each entry point raises :class:`TensorRTUnavailable` saying what to install.

Engines only run on the GPU and TensorRT version that built them, and also depend on the
ONNX, the profile, the precision, the ONNX rewrite they were built from (mixed FP16, INT8
Q/DQ; :data:`REWRITE_VERSION`) and (INT8) the calibration tiles, so an :class:`EngineKey`
holds all of these and an engine's file name carries its fingerprint
(``model.sm90.trt10.9.0.34.fp16.<fingerprint>.engine``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import torch

from distill.core.atomic import atomic_write_bytes, atomic_write_json
from distill.core.hashing import bytes_sha256 as sha256_bytes
from distill.core.hashing import canonical_hash
from distill.errors import DistillError
from distill.package import INPUT_NAME, OUTPUT_NAME, EngineEntry, ModelPackage

# Version of the ONNX rewrites in distill.export.tensorrt_build (to_mixed_fp16, insert_qdq, the
# calibration statistic), part of every engine's key: bump it whenever they change the graph
# TensorRT is given. Kept here because a predictor needs it to look the right engine up.
REWRITE_VERSION = 1
INSTALL_HINT = (
    "install TensorRT 10 (`pip install 'distill[tensorrt]' --extra-index-url https://pypi.nvidia.com`; plain "
    "`pip install tensorrt` gives 11.x, whose libraries are not on PyPI) on a machine with an NVIDIA GPU and a CUDA "
    "build of torch, or choose --backend torch or onnxruntime"
)


class TensorRTUnavailable(DistillError):
    """TensorRT (with its builder) or a CUDA GPU is missing here."""


class EngineError(DistillError):
    """An engine could not be built, loaded, or does not fit this GPU / TensorRT version."""


# ---------------------------------------------------------------------------------------------
# Availability


def tensorrt_available() -> bool:
    """True when ``tensorrt`` with a builder imports and torch sees a CUDA GPU."""
    try:
        require_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


def require_tensorrt():
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` naming what is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT is not installed ({exc}); {INSTALL_HINT}") from exc
    if not hasattr(trt, "Builder"):
        version = getattr(trt, "__version__", "?")
        raise TensorRTUnavailable(f"the installed tensorrt {version} has no builder (a lean runtime); {INSTALL_HINT}")
    if not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} predates strongly typed networks; install TensorRT 10 or later"
        )
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            f"TensorRT needs a CUDA GPU and a CUDA build of torch; none is visible here; {INSTALL_HINT}"
        )
    return trt


def compute_capability(device: int = 0) -> str:
    """``"8.9"`` style compute capability of a CUDA device."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


# ---------------------------------------------------------------------------------------------
# Naming and the engine cache


@dataclass(frozen=True)
class EngineKey:
    """Everything that changes an engine; one is used only where every field matches.

    Attributes:
        precision: ``fp32``, ``fp16`` or ``int8``.
        onnx_sha256: the package's ONNX (before the precision rewrite).
        profile: the optimisation profile, full input shapes ``(min, opt, max)``.
        gpu_name, compute_capability, tensorrt_version: engines run only where they were built.
        rewrite_version: :data:`REWRITE_VERSION` of the ONNX rewrite the engine was built from.
        calibration_sha256: INT8 only, the calibration tiles' hash. A predictor cannot know it
            and looks INT8 engines up without it (``None`` matches any calibration).
    """

    precision: str
    onnx_sha256: str
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    rewrite_version: int = REWRITE_VERSION
    calibration_sha256: str | None = None

    @property
    def fingerprint(self) -> str:
        """12 hex digits of every field but the calibration."""
        fields = {k: v for k, v in asdict(self).items() if k != "calibration_sha256"}
        return canonical_hash(fields)[:12]

    @property
    def _stem(self) -> str:
        return (
            f"model.sm{self.compute_capability.replace('.', '')}.trt{self.tensorrt_version}"
            f".{self.precision}.{self.fingerprint}"
        )

    @property
    def file_name(self) -> str:
        """``model.sm90.trt10.9.0.34.fp16.<fingerprint>[.cal<hash>].engine``: readable, and unique per key."""
        calibration = f".cal{self.calibration_sha256[:12]}" if self.calibration_sha256 else ""
        return f"{self._stem}{calibration}.engine"

    def matches_file(self, name: str) -> bool:
        """Whether an engine file (its name carries the fingerprint) was built for this key."""
        name = PurePosixPath(name).name
        if name == self.file_name:
            return True
        return (
            self.calibration_sha256 is None
            and re.fullmatch(re.escape(self._stem) + r"\.cal[0-9a-f]{12}\.engine", name) is not None
        )

    def matches(self, entry: EngineEntry) -> bool:
        return self.matches_file(entry.file) and (
            (entry.precision, entry.onnx_sha256) == (self.precision, self.onnx_sha256)
        )

    def describe(self) -> str:
        low, _, high = ("x".join(map(str, s[2:])) for s in self.profile)
        return (f"{self.precision} engine for {self.gpu_name} (compute capability {self.compute_capability}), TensorRT "
                f"{self.tensorrt_version}, profile {low}..{high}, rewrite v{self.rewrite_version}")  # fmt: skip


def current_engine_key(
    package: ModelPackage, precision: str, calibration_sha256: str | None = None, device: int = 0
) -> EngineKey:
    """The key of a ``precision`` engine for ``package`` on this GPU with this TensorRT."""
    trt = require_tensorrt()
    settings = package.inference
    profile = (tuple(settings.profile_min), tuple(settings.profile_opt), tuple(settings.profile_max))
    return EngineKey(precision, package.onnx_sha256, profile, torch.cuda.get_device_name(device),
                     compute_capability(device), trt.__version__, calibration_sha256=calibration_sha256)  # fmt: skip


class EngineCache:
    """Engines kept outside a package (a read-only package, or one folder for several machines).

    Each engine ``<key.file_name>`` has a JSON sidecar holding its sha256, its
    :class:`EngineEntry` and its whole key; a load re-hashes the engine and refuses a mismatch.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def store(self, key: EngineKey, data: bytes, entry: EngineEntry) -> Path:
        path = self.root / key.file_name
        atomic_write_bytes(path, data)
        atomic_write_json(
            path.with_name(f"{path.name}.json"), {"sha256": sha256_bytes(data), "key": asdict(key), **entry.to_dict()}
        )
        return path

    def find(self, key: EngineKey) -> Path | None:
        """The newest engine file for ``key`` that has a sidecar, or ``None``."""
        found = [
            p
            for p in self.root.glob("*.engine")
            if key.matches_file(p.name) and p.with_name(f"{p.name}.json").is_file()
        ]
        return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None

    def load(self, key: EngineKey) -> bytes | None:
        path = self.find(key)
        if path is None:
            return None
        data = path.read_bytes()
        if sha256_bytes(data) != json.loads(path.with_name(f"{path.name}.json").read_text()).get("sha256"):
            raise EngineError(
                f"{path}: sha256 differs from its sidecar; delete it and build it again with `distill export-engine`"
            )
        return data


def find_engine(package: ModelPackage, key: EngineKey, cache: EngineCache | None = None) -> bytes | None:
    """An engine for ``key``: the package's newest match (hash-checked when it was opened), else ``cache``'s."""
    for entry in reversed(package.engines):
        if key.matches(entry):
            return (package.root / entry.file).read_bytes()
    return cache.load(key) if cache is not None else None


def describe_engines(entries: Iterable[EngineEntry]) -> list[str]:
    """Short names for error messages: which engines a package holds."""
    return [
        f"{e.precision} sm{e.compute_capability} TRT {e.tensorrt_version} ({PurePosixPath(e.file).name})"
        for e in entries
    ]


# ---------------------------------------------------------------------------------------------
# Running (TensorRT and a CUDA GPU required)

_LOGGER = None


def trt_logger():
    """The process's one TensorRT logger, shared by every builder, parser and runtime.

    TensorRT keeps the first logger it is given process-wide and warns when a later builder or
    runtime brings another; the Python object must also outlive every engine, hence a global.
    """
    global _LOGGER
    trt = require_tensorrt()
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


class TensorRTRunner:
    """One deserialised engine and its execution context: ``(B, C, *S)`` CUDA float32 -> logits.

    Runs on a private CUDA stream: on torch's default (legacy) stream TensorRT adds a
    synchronisation per call. The stream waits for the caller's stream before the engine reads
    its input, and the caller's stream waits for the engine before anything reads the logits,
    so callers need no synchronisation of their own. :attr:`ready` turns true after
    :meth:`warm_up` succeeded.
    """

    def __init__(self, engine: bytes, device: int = 0) -> None:
        trt = require_tensorrt()
        self.device = torch.device("cuda", device)
        self._runtime = trt.Runtime(trt_logger())  # kept: the runtime must outlive its engine
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(engine)
            self.stream = torch.cuda.Stream(self.device)
        if self.engine is None:
            raise EngineError(
                f"the engine does not load with TensorRT {trt.__version__} on a compute capability "
                f"{compute_capability(device)} GPU: engines are tied to both; "
                "rebuild it with `distill export-engine` on this machine"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError("TensorRT could not create an execution context for the engine (out of GPU memory?)")
        self.profile = [tuple(s) for s in self.engine.get_tensor_profile_shape(INPUT_NAME, 0)]
        self.ready = False

    def fits(self, shape: Sequence[int]) -> bool:
        low, _, high = self.profile
        return len(shape) == len(low) and all(lo <= n <= hi for n, lo, hi in zip(shape, low, high))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.fits(images.shape):
            raise EngineError(
                f"input {tuple(images.shape)} lies outside the engine profile {self.profile[0]}..{self.profile[2]}"
            )
        caller = torch.cuda.current_stream(self.device)
        images = images.to(self.device, torch.float32).contiguous()
        # Waits before the output is allocated too: the caching allocator may hand out memory
        # that work queued on the caller's stream still reads.
        self.stream.wait_stream(caller)
        output = self._enqueue(images, self.stream.cuda_stream)
        caller.wait_stream(self.stream)
        return output

    def _enqueue(self, images: torch.Tensor, stream_handle: int) -> torch.Tensor:
        """Set shapes and addresses and queue the engine on ``stream_handle``; every refusal is an error.

        TensorRT reports a rejected shape or address by returning ``False`` (and logging), not by
        raising; ignored, the engine would run on stale shapes or pointers.
        """
        shape = tuple(images.shape)
        if not self.context.set_input_shape(INPUT_NAME, shape):
            raise EngineError(f"TensorRT refused input shape {shape} (profile {self.profile[0]}..{self.profile[2]})")
        out_shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
        if not out_shape or min(out_shape) < 0:
            raise EngineError(f"TensorRT left the output shape unresolved ({out_shape}) for input {shape}")
        output = torch.empty(out_shape, dtype=torch.float32, device=images.device)
        for name, tensor in ((INPUT_NAME, images), (OUTPUT_NAME, output)):
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise EngineError(f"TensorRT refused the address of tensor {name!r} (shape {tuple(tensor.shape)})")
        if not self.context.execute_async_v3(stream_handle):
            raise EngineError(f"TensorRT failed to queue the engine for input {shape} (see its log above)")
        return output

    def warm_up(self, shape: Sequence[int] | None = None) -> None:
        """One inference on zeros of ``shape`` (default: the profile's opt shape); sets :attr:`ready`."""
        self(torch.zeros(tuple(shape or self.profile[1]), device=self.device))
        torch.cuda.synchronize(self.device)
        self.ready = True


__all__ = [
    "INSTALL_HINT", "REWRITE_VERSION", "EngineCache", "EngineError", "EngineKey", "TensorRTRunner",
    "TensorRTUnavailable", "compute_capability", "current_engine_key", "describe_engines", "find_engine",
    "require_tensorrt", "tensorrt_available", "trt_logger",
]  # fmt: skip
