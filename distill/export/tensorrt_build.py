"""Building TensorRT engines from a package's ONNX: FP32, FP16 with FP32 norms, and INT8 through explicit Q/DQ.

This module owns building only: the ONNX rewrites, calibration, the build, the parity gate
and storing the result (:func:`export_engines`, :func:`build_engines`, used by ``distill
export-engine`` and ``distill export --tensorrt``). Loading, running and finding engines
(:class:`~distill.infer.tensorrt_runtime.EngineKey`, ``EngineCache``, ``TensorRTRunner``, the
shared logger) live in :mod:`distill.infer.tensorrt_runtime`, which the TensorRT backend uses
and this module imports, so a predictor never loads the builder's code.

Everything that touches ``tensorrt`` is guarded: importing this module never needs it, and
each entry point raises :class:`~distill.infer.tensorrt_runtime.TensorRTUnavailable` saying
what to install. The graph rewrites (mixed FP16, Q/DQ insertion, calibration) are plain ONNX
and run, and are tested, without a GPU.

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
ONNX, the profile, the precision, the rewrite above
(:data:`~distill.infer.tensorrt_runtime.REWRITE_VERSION`: bump it when a rewrite here
changes the graph) and (INT8) the calibration tiles (:func:`calibration_sha256`); the engine
key holds all of these, and each engine's manifest entry records them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.paths import prepare_output_dir
from distill.infer.onnxruntime_session import onnxruntime_session
from distill.infer.tensorrt_runtime import (
    EngineCache,
    EngineError,
    EngineKey,
    TensorRTRunner,
    current_engine_key,
    require_tensorrt,
    trt_logger,
)
from distill.package import ENGINES_DIR, INPUT_NAME, OUTPUT_NAME, EngineEntry, InferenceSettings, ModelPackage

PRECISIONS = ("fp32", "fp16", "int8")
NORM_OPS = frozenset({"InstanceNormalization", "BatchNormalization", "LayerNormalization", "GroupNormalization"})
# Inputs the ONNX spec (or numerical sense) requires in FP32 whatever the activations are.
FP32_INPUTS: dict[str, frozenset[int]] = {"Resize": frozenset({1, 2})}
INT8_MAX = 127.0
DEFAULT_WORKSPACE_BYTES = 4 << 30


# ---------------------------------------------------------------------------------------------
# Calibration identity


def calibration_sha256(tiles: Sequence[np.ndarray]) -> str:
    """Hash of INT8 calibration tiles (values and shapes): other tiles, other scales, another engine."""
    digest = hashlib.sha256()
    for tile in tiles:
        tile = np.ascontiguousarray(tile, dtype=np.float32)
        digest.update(repr(tile.shape).encode())
        digest.update(tile.tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Graph rewrites (plain ONNX; no TensorRT needed). Every engine's key carries their version,
# distill.infer.tensorrt_runtime.REWRITE_VERSION: bump it whenever they change the graph
# TensorRT is given.


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
            nodes += [
                _cast(source, node.input[0], TensorProto.FLOAT),
                node,
                _cast(node.output[0], target, TensorProto.FLOAT16),
            ]
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
        dequant = helper.make_node("DequantizeLinear", [f"{name}__q", f"{name}__scale", f"{name}__zero"],
                                   [f"{name}__dq"], name=f"{name}/DQ", **axis_attr)  # fmt: skip
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


def calibration_tiles(
    volumes: Iterable[np.ndarray], n_tiles: int, tile: Sequence[int], seed: int = 0
) -> list[np.ndarray]:
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


def calibration_tiles_from_cache(
    cache_dir: str | Path, n_tiles: int, tile: Sequence[int], seed: int = 0
) -> list[np.ndarray]:
    """Calibration tiles from a teacher cache's preprocessed images (the students' training inputs)."""
    from distill.cache import TeacherCache  # only the INT8 path needs the cache reader

    cache = TeacherCache.open(cache_dir, require_complete=False)
    rng = np.random.default_rng(seed)
    case_ids = cache.case_ids
    if not case_ids:
        raise EngineError(f"{cache_dir}: the teacher cache holds no case to calibrate on")
    chosen = [case_ids[i] for i in rng.permutation(len(case_ids))[: max(1, min(len(case_ids), n_tiles))]]
    return calibration_tiles((cache.read_case(c).images for c in chosen), n_tiles, tile, seed)


def prepare_onnx(
    data: bytes, precision: str, calibration: Sequence[np.ndarray] | None = None, threads: int | None = None
) -> bytes:
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
# Building (TensorRT and a CUDA GPU required)


def build_engine(
    data: bytes, precision: str, settings: InferenceSettings, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
) -> bytes:
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
            raise EngineError(
                f"norm layer {layer.name!r} would run in {layer.get_input(0).dtype}; norms must stay FP32"
            )


# ---------------------------------------------------------------------------------------------
# The whole step: prepare, build, gate, store (``distill export-engine`` and ``distill export --tensorrt``)


@dataclass(frozen=True)
class BuiltEngine:
    key: EngineKey
    data: bytes
    entry: EngineEntry
    parity: dict[str, Any]


def build_gated_engine(package: ModelPackage, precision: str, parity_cases,
                       calibration: Sequence[np.ndarray] | None = None, thresholds=None,
                       threads: int | None = None) -> BuiltEngine:
    """Build a ``precision`` engine for ``package`` and hold it to the parity gate against torch.

    Args:
        parity_cases: :class:`distill.export.onnx_export.ParityCase` list (held-out cases or phantoms).
        calibration: INT8 calibration tiles (see :func:`calibration_tiles_from_cache`).
        thresholds: parity marks; default :data:`distill.export.onnx_export.PRECISION_THRESHOLDS`.

    Raises:
        TensorRTUnavailable, EngineError, ParityError.
    """
    from distill.export.onnx_export import PRECISION_THRESHOLDS, measure_parity, torch_logits_fn

    key = current_engine_key(
        package, precision, calibration_sha256(calibration) if precision == "int8" and calibration else None
    )
    settings = package.inference
    engine = build_engine(
        prepare_onnx(package.onnx_path.read_bytes(), precision, calibration, threads), precision, settings
    )
    runner = TensorRTRunner(engine)
    runner.warm_up()

    def run_engine(images: np.ndarray) -> np.ndarray:
        return runner(torch.from_numpy(images)).cpu().numpy()

    report = measure_parity(f"tensorrt-{precision}", torch_logits_fn(package.load_student()), run_engine, parity_cases,
                            thresholds or PRECISION_THRESHOLDS[precision], package.thresholds,
                            package.convention)  # fmt: skip
    report.raise_if_failed()
    entry = EngineEntry(
        file=f"{ENGINES_DIR}/{key.file_name}", compute_capability=key.compute_capability,
        tensorrt_version=key.tensorrt_version, precision=precision, onnx_sha256=key.onnx_sha256,
        profile={"min": list(settings.profile_min), "opt": list(settings.profile_opt),
                 "max": list(settings.profile_max)},
        parity=report.to_dict(), gpu_name=key.gpu_name, rewrite_version=key.rewrite_version,
        calibration_sha256=key.calibration_sha256,
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


def build_engines(package: ModelPackage, precisions: Sequence[str], parity_cases, *,
                  cache: EngineCache | None = None, calibration_cache: str | Path | None = None,
                  n_calibration_tiles: int = 32, threads: int | None = None,
                  rebuild: bool = False) -> tuple[EngineRecord, ...]:
    """Build, gate and store one engine per precision, into ``cache`` or else into the package.

    An engine whose whole key (INT8: calibration included) is already stored is left alone
    unless ``rebuild``. INT8 tiles come from ``calibration_cache`` (a teacher cache) or else
    from the parity cases.
    """
    if package.has_uncertainty:
        raise EngineError(f"{package.root}: TensorRT engines are not built for packages with the distilled uncertainty "
                          "output (the engine runner binds only the logits); use the torch or onnxruntime backend")
    records = []
    for precision in precisions:
        if precision not in PRECISIONS:
            raise EngineError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        start = time.perf_counter()
        calibration = (
            _calibration(package, parity_cases, calibration_cache, n_calibration_tiles) if precision == "int8" else None
        )
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
                raise EngineError(
                    f"{package.root}: cannot store the engine there ({exc}); pass --engine-cache DIR"
                ) from exc
        records.append(
            EngineRecord(precision, path, built=True, seconds=time.perf_counter() - start, parity=built.parity)
        )
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
    if config.engine_cache:
        prepare_output_dir(config.engine_cache, "engine cache folder")
    # The same parity cases export would pick (held-out folder, else phantoms).
    selection = ExportConfig(run_dir=package.root, out=package.root, held_out=config.held_out,
                             max_held_out=config.max_held_out, n_phantoms=config.n_phantoms)  # fmt: skip
    cases, _ = held_out_cases(selection, package.preprocess_config)
    cache = EngineCache(config.engine_cache) if config.engine_cache else None
    return EngineBuildResult(build_engines(package, config.precisions, cases, cache=cache,
                                           calibration_cache=config.calibration_cache,
                                           n_calibration_tiles=config.calibration_tiles, threads=config.threads,
                                           rebuild=config.rebuild))  # fmt: skip


__all__ = [
    "PRECISIONS", "ActivationRange", "BuiltEngine", "EngineBuildResult", "EngineExportConfig", "EngineRecord",
    "build_engine", "build_engines", "build_gated_engine", "calibrate_activation_ranges", "calibration_sha256",
    "calibration_tiles", "calibration_tiles_from_cache", "check_norms_fp32", "conv_activation_inputs", "export_engines",
    "insert_qdq", "prepare_onnx", "to_mixed_fp16",
]  # fmt: skip
