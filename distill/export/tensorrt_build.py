"""TensorRT engines from a package's ONNX: FP32, FP16 with FP32 norms, and INT8 through explicit Q/DQ.

Everything that touches ``tensorrt`` is guarded: importing this module never needs it, and
each entry point raises :class:`TensorRTUnavailable` saying what to install. The graph
rewrites (mixed FP16, Q/DQ insertion, calibration) are plain ONNX and run, and are tested,
without a GPU.

Precision is fixed in the ONNX graph and the network is built *strongly typed*
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): TensorRT 11 removed the weak-typing
builder flags (``FP16``, ``INT8``, ``OBEY_PRECISION_CONSTRAINTS``) and INT8 calibrators were
deprecated from 10.1 in favour of explicit Q/DQ, and per-layer precision hints were not
always honoured in 10.0 (NVIDIA/TensorRT#3941). So:

* ``fp32``: the exported graph as is, TF32 disabled (TF32 convs would miss the fp32 gate);
* ``fp16``: :func:`to_mixed_fp16` casts weights and activations to FP16 but keeps every
  normalisation (and its scale and shift) in FP32, with casts around it: instance-norm
  statistics over a whole volume overflow or lose precision in FP16;
* ``int8``: :func:`insert_qdq` puts symmetric INT8 Q/DQ pairs on every ``Conv`` input
  (per-tensor activation scales from calibration tiles, drawn from the teacher cache) and
  weight (per output channel); transposed convs, norms and the head stay FP32.

Engines only run on the GPU and TensorRT version that built them, and also depend on the
ONNX, the profile, the precision, the rewrite above and (INT8) the calibration tiles, so an
:class:`EngineKey` holds all of these and an engine's file name carries its fingerprint
(``model.sm90.trt10.9.0.34.fp16.<fingerprint>.engine``). Engines are built only here, by
``distill export-engine`` or ``distill export --tensorrt`` (:func:`export_engines`,
:func:`build_engines`); the TensorRT backend only looks them up, and a runner is declared
ready only after a warm-up inference succeeded.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from distill.core.atomic import atomic_write_bytes, atomic_write_json
from distill.core.hashing import bytes_sha256 as sha256_bytes
from distill.core.hashing import canonical_hash
from distill.errors import DistillError
from distill.package import ENGINES_DIR, INPUT_NAME, OUTPUT_NAME, EngineEntry, InferenceSettings, ModelPackage

PRECISIONS = ("fp32", "fp16", "int8")
NORM_OPS = frozenset({"InstanceNormalization", "BatchNormalization", "LayerNormalization", "GroupNormalization"})
# Inputs the ONNX spec (or numerical sense) requires in FP32 whatever the activations are.
FP32_INPUTS: dict[str, frozenset[int]] = {"Resize": frozenset({1, 2})}
INT8_MAX = 127.0
DEFAULT_WORKSPACE_BYTES = 4 << 30
# Version of the ONNX rewrites below (to_mixed_fp16, insert_qdq, the calibration statistic), part of
# every engine's key: bump it whenever they change the graph TensorRT is given.
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
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} predates strongly typed networks; install TensorRT 10 or later")
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(f"TensorRT needs a CUDA GPU and a CUDA build of torch; none is visible here; {INSTALL_HINT}")
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
        return f"model.sm{self.compute_capability.replace('.', '')}.trt{self.tensorrt_version}.{self.precision}.{self.fingerprint}"

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
        return self.calibration_sha256 is None and re.fullmatch(re.escape(self._stem) + r"\.cal[0-9a-f]{12}\.engine", name) is not None

    def matches(self, entry: EngineEntry) -> bool:
        return self.matches_file(entry.file) and (entry.precision, entry.onnx_sha256) == (self.precision, self.onnx_sha256)

    def describe(self) -> str:
        low, _, high = ("x".join(map(str, s[2:])) for s in self.profile)
        return (f"{self.precision} engine for {self.gpu_name} (compute capability {self.compute_capability}), TensorRT "
                f"{self.tensorrt_version}, profile {low}..{high}, rewrite v{self.rewrite_version}")  # fmt: skip


def current_engine_key(package: ModelPackage, precision: str, calibration_sha256: str | None = None, device: int = 0) -> EngineKey:
    """The key of a ``precision`` engine for ``package`` on this GPU with this TensorRT."""
    trt = require_tensorrt()
    settings = package.inference
    profile = (tuple(settings.profile_min), tuple(settings.profile_opt), tuple(settings.profile_max))
    return EngineKey(precision, package.onnx_sha256, profile, torch.cuda.get_device_name(device), compute_capability(device),
                     trt.__version__, calibration_sha256=calibration_sha256)  # fmt: skip


def calibration_sha256(tiles: Sequence[np.ndarray]) -> str:
    """Hash of INT8 calibration tiles (values and shapes): other tiles, other scales, another engine."""
    digest = hashlib.sha256()
    for tile in tiles:
        tile = np.ascontiguousarray(tile, dtype=np.float32)
        digest.update(repr(tile.shape).encode())
        digest.update(tile.tobytes())
    return digest.hexdigest()


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
        atomic_write_json(path.with_name(f"{path.name}.json"), {"sha256": sha256_bytes(data), "key": asdict(key), **entry.to_dict()})
        return path

    def find(self, key: EngineKey) -> Path | None:
        """The newest engine file for ``key`` that has a sidecar, or ``None``."""
        found = [p for p in self.root.glob("*.engine") if key.matches_file(p.name) and p.with_name(f"{p.name}.json").is_file()]
        return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None

    def load(self, key: EngineKey) -> bytes | None:
        path = self.find(key)
        if path is None:
            return None
        data = path.read_bytes()
        if sha256_bytes(data) != json.loads(path.with_name(f"{path.name}.json").read_text()).get("sha256"):
            raise EngineError(f"{path}: sha256 differs from its sidecar; delete it and build it again with `distill export-engine`")
        return data


def find_engine(package: ModelPackage, key: EngineKey, cache: EngineCache | None = None) -> bytes | None:
    """An engine for ``key``: the package's newest match (hash-checked when it was opened), else ``cache``'s."""
    for entry in reversed(package.engines):
        if key.matches(entry):
            return (package.root / entry.file).read_bytes()
    return cache.load(key) if cache is not None else None


def describe_engines(entries: Iterable[EngineEntry]) -> list[str]:
    """Short names for error messages: which engines a package holds."""
    return [f"{e.precision} sm{e.compute_capability} TRT {e.tensorrt_version} ({PurePosixPath(e.file).name})" for e in entries]


# ---------------------------------------------------------------------------------------------
# Graph rewrites (plain ONNX; no TensorRT needed)


def _float_constants_to_initializers(graph) -> None:
    """Move float ``Constant`` node values into initializers, so one rule types every float parameter."""
    from onnx import TensorProto, helper, numpy_helper

    kept = []
    for node in graph.node:
        value = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and value.data_type == TensorProto.FLOAT:
            tensor = numpy_helper.from_array(numpy_helper.to_array(value), node.output[0])
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _collapse_initializer_identities(graph) -> None:
    """Replace ``Identity(initializer)`` (the exporter's de-duplicated parameters) by the initializer itself."""
    initializers = {t.name for t in graph.initializer}
    aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers}
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in aliases)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in aliases:
                node.input[i] = aliases[name]
    del graph.node[:]
    graph.node.extend(kept)


def _keeps_fp32(node, index: int) -> bool:
    return (node.op_type in NORM_OPS and index >= 1) or index in FP32_INPUTS.get(node.op_type, ())


def _cast(name_in: str, name_out: str, to: int):
    from onnx import helper

    return helper.make_node("Cast", [name_in], [name_out], to=to, name=f"{name_out}/Cast")


def to_mixed_fp16(model):
    """A copy of ``model`` computing in FP16 except normalisation layers, which stay FP32.

    The graph keeps its FP32 ``images`` input and ``logits`` output (casts at both ends), so a
    caller sees no difference but speed and rounding. Float parameters are stored in FP16,
    except norm scales/shifts and inputs the spec wants in FP32 (``Resize`` scales); every norm
    gets a cast to FP32 before it and back to FP16 after it.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    _float_constants_to_initializers(graph)
    _collapse_initializer_identities(graph)
    floats = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    half_copies: dict[str, str] = {}
    used_fp32: set[str] = set()
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name not in floats:
                continue
            if _keeps_fp32(node, i):
                used_fp32.add(name)
                continue
            if name not in half_copies:
                half = numpy_helper.from_array(numpy_helper.to_array(floats[name]).astype(np.float16), f"{name}__fp16")
                graph.initializer.append(half)
                half_copies[name] = half.name
            node.input[i] = half_copies[name]
    unused = [t for t in graph.initializer if t.name in floats and t.name not in used_fp32]
    for tensor in unused:
        graph.initializer.remove(tensor)

    nodes = [_cast(INPUT_NAME, f"{INPUT_NAME}__fp16", TensorProto.FLOAT16)]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == INPUT_NAME:
                node.input[i] = f"{INPUT_NAME}__fp16"
        if node.op_type in NORM_OPS:
            source, target = node.input[0], node.output[0]
            node.input[0], node.output[0] = f"{source}__fp32", f"{target}__fp32"
            nodes += [_cast(source, node.input[0], TensorProto.FLOAT), node, _cast(node.output[0], target, TensorProto.FLOAT16)]
        else:
            if OUTPUT_NAME in node.output:
                node.output[list(node.output).index(OUTPUT_NAME)] = f"{OUTPUT_NAME}__fp16"
            nodes.append(node)
    nodes.append(_cast(f"{OUTPUT_NAME}__fp16", OUTPUT_NAME, TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale FP32 types; shape inference recomputes them
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass(frozen=True)
class ActivationRange:
    """Calibrated absolute range of one tensor: ``amax`` maps to INT8 127."""

    tensor: str
    amax: float


def conv_activation_inputs(model) -> list[str]:
    """Names of the activation (non-initializer) inputs of every ``Conv`` node, in graph order, once each."""
    initializers = {t.name for t in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[0] not in initializers and node.input[0] not in names:
            names.append(node.input[0])
    return names


def calibrate_activation_ranges(data: bytes, tiles: Iterable[np.ndarray], percentile: float = 99.99,
                                threads: int | None = None) -> list[ActivationRange]:
    """Per-tensor ``amax`` of every ``Conv`` input over calibration tiles, from onnxruntime.

    ``amax`` is the largest per-tile ``percentile`` of ``|x|`` (a percentile, not the maximum,
    so one outlier voxel does not waste the INT8 range).

    Args:
        data: the FP32 ONNX.
        tiles: float32 ``(C, X, Y, Z)`` preprocessed tiles (see :func:`calibration_tiles`).
    """
    import onnx

    from distill.export.onnx_export import onnxruntime_session

    model = onnx.load_from_string(data)
    names = conv_activation_inputs(model)
    known_outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in known_outputs:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = onnxruntime_session(model.SerializeToString(), threads)
    amax = dict.fromkeys(names, 0.0)
    for tile in tiles:
        values = session.run(names, {INPUT_NAME: np.ascontiguousarray(tile[None], dtype=np.float32)})
        for name, value in zip(names, values):
            amax[name] = max(amax[name], float(np.percentile(np.abs(value), percentile)))
    if not amax:
        raise EngineError("calibration found no Conv layer to quantise")
    return [ActivationRange(name, value) for name, value in amax.items()]


def insert_qdq(model, ranges: Sequence[ActivationRange]):
    """A copy of ``model`` with explicit INT8 ``QuantizeLinear``/``DequantizeLinear`` pairs on every ``Conv``.

    Activations: one symmetric per-tensor scale ``amax / 127`` (zero point 0) per calibrated
    tensor, shared by all its consumers. Weights: per output channel (axis 0), scale
    ``max |w| / 127``. Biases, transposed convs and norms are left in float: TensorRT fuses
    the Q/DQ pairs into INT8 convolutions and runs the rest in the graph's float type.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    _collapse_initializer_identities(graph)
    initializers = {t.name: t for t in graph.initializer}
    scales = {r.tensor: max(r.amax, 1e-8) / INT8_MAX for r in ranges}
    dequantised: dict[str, str] = {}
    new_nodes = []

    def quantise(name: str, scale: np.ndarray, axis: int | None) -> str:
        if name in dequantised:
            return dequantised[name]
        zero = np.zeros(scale.shape, dtype=np.int8)  # symmetric INT8, as TensorRT requires
        graph.initializer.extend([numpy_helper.from_array(scale.astype(np.float32), f"{name}__scale"),
                                  numpy_helper.from_array(zero, f"{name}__zero")])  # fmt: skip
        axis_attr = {} if axis is None else {"axis": axis}
        quant = helper.make_node("QuantizeLinear", [name, f"{name}__scale", f"{name}__zero"], [f"{name}__q"],
                                 name=f"{name}/Q", **axis_attr)  # fmt: skip
        dequant = helper.make_node("DequantizeLinear", [f"{name}__q", f"{name}__scale", f"{name}__zero"], [f"{name}__dq"],
                                   name=f"{name}/DQ", **axis_attr)  # fmt: skip
        new_nodes.extend([quant, dequant])
        dequantised[name] = f"{name}__dq"
        return dequantised[name]

    ordered = []
    for node in graph.node:
        if node.op_type == "Conv" and node.input[0] in scales and node.input[1] in initializers:
            new_nodes.clear()
            node.input[0] = quantise(node.input[0], np.array(scales[node.input[0]], dtype=np.float32), None)
            weight = numpy_helper.to_array(initializers[node.input[1]])
            per_channel = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1) / INT8_MAX
            node.input[1] = quantise(node.input[1], np.maximum(per_channel, 1e-12), 0)
            ordered.extend(new_nodes)
        ordered.append(node)
    if not any(n.op_type == "QuantizeLinear" for n in ordered):
        raise EngineError("no Conv input had a calibrated range; nothing was quantised")
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.value_info[:]
    # QuantizeLinear with per-axis scales needs opset >= 13; the export's 17 has it.
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        raise EngineError("explicit Q/DQ needs ONNX opset 13 or later")
    onnx.checker.check_model(model, full_check=True)
    return model


def calibration_tiles(volumes: Iterable[np.ndarray], n_tiles: int, tile: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """``n_tiles`` crops ``(C, *tile)`` centred on random brain voxels of preprocessed volumes ``(C, X, Y, Z)``.

    Tiles reaching past a volume are zero-filled, as preprocessing pads. Centres are drawn
    inside the brain (non-zero in any channel) so tiles hold tissue, not background.
    """
    rng = np.random.default_rng(seed)
    volumes = list(volumes)
    if not volumes:
        raise EngineError("calibration needs at least one volume")
    tiles = []
    for k in range(n_tiles):
        volume = volumes[k % len(volumes)]
        brain = np.argwhere(np.any(volume != 0, axis=0))
        centre = brain[rng.integers(len(brain))] if len(brain) else np.array(volume.shape[1:]) // 2
        tiles.append(_crop_zero_filled(volume, [int(c) - n // 2 for c, n in zip(centre, tile)], tile))
    return tiles


def _crop_zero_filled(volume: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    out = np.zeros((volume.shape[0], *size), dtype=np.float32)
    src = tuple(slice(max(s, 0), min(s + n, dim)) for s, n, dim in zip(start, size, volume.shape[1:]))
    dst = tuple(slice(b.start - s, b.stop - s) for b, s in zip(src, start))
    out[(slice(None), *dst)] = volume[(slice(None), *src)]
    return out


def calibration_tiles_from_cache(cache_dir: str | Path, n_tiles: int, tile: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """Calibration tiles from a teacher cache's preprocessed images (the students' training inputs)."""
    from distill.cache import TeacherCache  # only the INT8 path needs the cache reader

    cache = TeacherCache.open(cache_dir, require_complete=False)
    rng = np.random.default_rng(seed)
    case_ids = cache.case_ids
    if not case_ids:
        raise EngineError(f"{cache_dir}: the teacher cache holds no case to calibrate on")
    chosen = [case_ids[i] for i in rng.permutation(len(case_ids))[: max(1, min(len(case_ids), n_tiles))]]
    return calibration_tiles((cache.read_case(c).images for c in chosen), n_tiles, tile, seed)


def prepare_onnx(data: bytes, precision: str, calibration: Sequence[np.ndarray] | None = None, threads: int | None = None) -> bytes:
    """The ONNX a ``precision`` engine is built from (see the module docstring)."""
    import onnx

    if precision == "fp32":
        return data
    if precision == "fp16":
        return to_mixed_fp16(onnx.load_from_string(data)).SerializeToString()
    if precision == "int8":
        if not calibration:
            raise EngineError("an INT8 engine needs calibration tiles (pass --calibration-cache with a teacher cache)")
        ranges = calibrate_activation_ranges(data, calibration, threads=threads)
        return insert_qdq(onnx.load_from_string(data), ranges).SerializeToString()
    raise EngineError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


# ---------------------------------------------------------------------------------------------
# Building and running (TensorRT and a CUDA GPU required)

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


def build_engine(data: bytes, precision: str, settings: InferenceSettings, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> bytes:
    """Serialised engine for ``data`` (already prepared for ``precision``), with the manifest's profile.

    The network is strongly typed: the ONNX's own tensor types decide each layer's precision.
    """
    trt = require_tensorrt()
    logger = trt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, "NATIVE_INSTANCENORM"):
        parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)  # a real norm layer, whose input type we can check
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT {trt.__version__} could not parse the ONNX: {errors}")
    check_norms_fp32(network, trt)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, settings.profile_min, settings.profile_opt, settings.profile_max)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT {trt.__version__} failed to build the {precision} engine (see its log above)")
    return bytes(serialized)


def check_norms_fp32(network, trt) -> None:
    """Every normalisation layer of a parsed network reads FP32 (the mixed-FP16 graph promises it)."""
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == trt.LayerType.NORMALIZATION and layer.get_input(0).dtype != trt.float32:
            raise EngineError(f"norm layer {layer.name!r} would run in {layer.get_input(0).dtype}; norms must stay FP32")


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
                f"{compute_capability(device)} GPU: engines are tied to both; rebuild it with `distill export-engine` on this machine"
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
            raise EngineError(f"input {tuple(images.shape)} lies outside the engine profile {self.profile[0]}..{self.profile[2]}")
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


# ---------------------------------------------------------------------------------------------
# The whole step: prepare, build, gate, store (``distill export-engine`` and ``distill export --tensorrt``)


@dataclass(frozen=True)
class BuiltEngine:
    key: EngineKey
    data: bytes
    entry: EngineEntry
    parity: dict[str, Any]


def build_gated_engine(package: ModelPackage, precision: str, parity_cases, calibration: Sequence[np.ndarray] | None = None,
                       thresholds=None, threads: int | None = None) -> BuiltEngine:
    """Build a ``precision`` engine for ``package`` and hold it to the parity gate against torch.

    Args:
        parity_cases: :class:`distill.export.onnx_export.ParityCase` list (held-out cases or phantoms).
        calibration: INT8 calibration tiles (see :func:`calibration_tiles_from_cache`).
        thresholds: parity marks; default :data:`distill.export.onnx_export.PRECISION_THRESHOLDS`.

    Raises:
        TensorRTUnavailable, EngineError, ParityError.
    """
    from distill.export.onnx_export import PRECISION_THRESHOLDS, measure_parity, torch_logits_fn

    key = current_engine_key(package, precision, calibration_sha256(calibration) if precision == "int8" and calibration else None)
    settings = package.inference
    engine = build_engine(prepare_onnx(package.onnx_path.read_bytes(), precision, calibration, threads), precision, settings)
    runner = TensorRTRunner(engine)
    runner.warm_up()

    def run_engine(images: np.ndarray) -> np.ndarray:
        return runner(torch.from_numpy(images)).cpu().numpy()

    report = measure_parity(f"tensorrt-{precision}", torch_logits_fn(package.load_student()), run_engine, parity_cases,
                            thresholds or PRECISION_THRESHOLDS[precision], package.thresholds, package.convention)  # fmt: skip
    report.raise_if_failed()
    entry = EngineEntry(
        file=f"{ENGINES_DIR}/{key.file_name}", compute_capability=key.compute_capability, tensorrt_version=key.tensorrt_version,
        precision=precision, onnx_sha256=key.onnx_sha256,
        profile={"min": list(settings.profile_min), "opt": list(settings.profile_opt), "max": list(settings.profile_max)},
        parity=report.to_dict(),
    )  # fmt: skip
    return BuiltEngine(key=key, data=engine, entry=entry, parity=report.to_dict())


@dataclass(frozen=True)
class EngineRecord:
    """One engine :func:`build_engines` made or found: where it lies and whether it was built now."""

    precision: str
    path: Path
    built: bool
    seconds: float
    parity: dict[str, Any] | None = None


@dataclass(frozen=True)
class EngineBuildResult:
    """What ``distill export-engine`` did, one :class:`EngineRecord` per precision."""

    engines: tuple[EngineRecord, ...]

    def __str__(self) -> str:
        lines = []
        for r in self.engines:
            state = f"built in {r.seconds:.0f} s" if r.built else "already there (--rebuild to build it again)"
            lines.append(f"{r.precision}: {r.path} ({state})")
        return "\n".join(lines)


def build_engines(package: ModelPackage, precisions: Sequence[str], parity_cases, *, cache: EngineCache | None = None,
                  calibration_cache: str | Path | None = None, n_calibration_tiles: int = 32, threads: int | None = None,
                  rebuild: bool = False) -> tuple[EngineRecord, ...]:
    """Build, gate and store one engine per precision, into ``cache`` or else into the package.

    An engine whose whole key (INT8: calibration included) is already stored is left alone
    unless ``rebuild``. INT8 tiles come from ``calibration_cache`` (a teacher cache) or else
    from the parity cases.
    """
    records = []
    for precision in precisions:
        if precision not in PRECISIONS:
            raise EngineError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        start = time.perf_counter()
        calibration = _calibration(package, parity_cases, calibration_cache, n_calibration_tiles) if precision == "int8" else None
        key = current_engine_key(package, precision, calibration_sha256(calibration) if calibration else None)
        existing = _stored_path(package, key, cache)
        if existing is not None and not rebuild:
            records.append(EngineRecord(precision, existing, built=False, seconds=0.0))
            continue
        built = build_gated_engine(package, precision, parity_cases, calibration, threads=threads)
        if cache is not None:
            path = cache.store(built.key, built.data, built.entry)
        else:
            try:
                path = package.add_engine(built.key.file_name, built.data, built.entry)
            except OSError as exc:
                raise EngineError(f"{package.root}: cannot store the engine there ({exc}); pass --engine-cache DIR") from exc
        records.append(EngineRecord(precision, path, built=True, seconds=time.perf_counter() - start, parity=built.parity))
    return tuple(records)


def _stored_path(package: ModelPackage, key: EngineKey, cache: EngineCache | None) -> Path | None:
    if cache is not None:
        return cache.find(key)
    return next((package.root / e.file for e in reversed(package.engines) if key.matches(e)), None)


def _calibration(package: ModelPackage, parity_cases, calibration_cache, n_tiles: int) -> list[np.ndarray]:
    # Post-norm activations are scale-free, so small tiles calibrate as well as whole volumes.
    tile = (max(64, 2 * package.preprocess_config.divisor),) * 3
    if calibration_cache is not None:
        return calibration_tiles_from_cache(calibration_cache, n_tiles, tile)
    return calibration_tiles([c.images for c in parity_cases], n_tiles, tile)


@dataclass(frozen=True)
class EngineExportConfig:
    """``distill export-engine``: engines for an existing package, on the machine that will run them.

    Attributes:
        package: the package folder.
        precisions: engines to build.
        engine_cache: store engines in this folder instead of the package (a read-only package);
            pass the same folder to ``--engine-cache`` when predicting.
        held_out, max_held_out, n_phantoms: the parity cases, chosen as ``distill export`` does.
        calibration_cache, calibration_tiles: INT8 calibration tiles from a teacher cache.
        threads: CPU threads for torch and onnxruntime in the gate and the calibration.
        rebuild: build even when a matching engine is stored.
    """

    package: Path
    precisions: tuple[str, ...] = ("fp16",)
    engine_cache: Path | None = None
    held_out: Path | None = None
    max_held_out: int = 3
    n_phantoms: int = 2
    calibration_cache: Path | None = None
    calibration_tiles: int = 32
    threads: int | None = 2
    rebuild: bool = False


def export_engines(config: EngineExportConfig) -> EngineBuildResult:
    """Build the engines ``config`` asks for (see :func:`build_engines`); TensorRT and a GPU required."""
    from distill.export.run import ExportConfig, held_out_cases

    require_tensorrt()
    package = ModelPackage.open(config.package)
    # The same parity cases export would pick (held-out folder, else phantoms).
    selection = ExportConfig(run_dir=package.root, out=package.root, held_out=config.held_out,
                             max_held_out=config.max_held_out, n_phantoms=config.n_phantoms)  # fmt: skip
    cases, _ = held_out_cases(selection, package.preprocess_config)
    cache = EngineCache(config.engine_cache) if config.engine_cache else None
    return EngineBuildResult(build_engines(package, config.precisions, cases, cache=cache, calibration_cache=config.calibration_cache,
                                           n_calibration_tiles=config.calibration_tiles, threads=config.threads,
                                           rebuild=config.rebuild))  # fmt: skip


__all__ = [
    "PRECISIONS", "REWRITE_VERSION", "ActivationRange", "BuiltEngine", "EngineBuildResult", "EngineCache", "EngineError",
    "EngineExportConfig", "EngineKey", "EngineRecord", "TensorRTRunner", "TensorRTUnavailable", "build_engine",
    "build_engines", "build_gated_engine", "calibrate_activation_ranges", "calibration_sha256", "calibration_tiles",
    "calibration_tiles_from_cache", "compute_capability", "conv_activation_inputs", "current_engine_key",
    "describe_engines", "export_engines", "find_engine", "insert_qdq", "prepare_onnx", "require_tensorrt",
    "tensorrt_available", "to_mixed_fp16", "trt_logger",
]  # fmt: skip
