"""``distill export``: a trained student run folder -> a verified model package.

Steps, all inside a hidden temporary folder beside the target, which is renamed onto the
target only at the very end (a failed gate or a crash leaves no package behind):

1. read ``student.pt`` (weights only) and ``student.json`` (the card); rebuild the student;
2. preprocess the held-out cases (a folder of BraTS cases, or synthetic phantoms) the way the
   package will say;
3. export the ONNX (:mod:`distill.export.onnx_export`), check it, optionally simplify it;
4. parity gate: onnxruntime vs torch on the held-out cases (probabilities, labels and, for a
   student with the distilled-uncertainty head, its ``uncertainty`` output), or :class:`ParityError`;
5. write ``model.onnx``, ``model.pt`` and the hashed ``model.json``;
6. optionally build TensorRT engines, each held to its own parity gate;
7. re-open and verify the package, then rename it into place.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import __version__
from distill.core.hashing import file_sha256
from distill.core.paths import prepare_output_dir, remove_stale_staging, staging_dir
from distill.data.case import load_case
from distill.data.conventions import REGIONS, get_convention
from distill.data.discovery import MODALITIES, find_cases
from distill.data.preprocess import PreprocessConfig, preprocess
from distill.errors import DistillError
from distill.export.onnx_export import (
    EXPORTER,
    OPSET,
    ParityCase,
    ParityThresholds,
    export_onnx,
    has_uncertainty_head,
    measure_parity,
    onnxruntime_logits_fn,
    onnxruntime_uncertainty_fn,
    output_names,
    simplify_onnx,
    torch_logits_fn,
    torch_uncertainty_fn,
)
from distill.package import (
    INPUT_NAME,
    MANIFEST_NAME,
    ONNX_NAME,
    OUTPUT_NAME,
    UNCERTAINTY_NAME,
    WEIGHTS_NAME,
    Manifest,
    ModelPackage,
    ModelSection,
    OutputSection,
    SourceSection,
    TensorSpec,
    UncertaintySection,
    default_inference_settings,
    inputs_section,
    labels_section,
    preprocessing_section,
    write_manifest,
)
from distill.package.settings import PostprocessConfig
from distill.students import StudentConfig, count_macs, count_parameters
from distill.students.card import StudentCard, StudentCardError, StudentRun, read_student_run

HELD_OUT_PHANTOM_SEED = 9_000  # far from the seeds phantom training sets use by default


class ExportConfigError(DistillError):
    """The run folder or the export options cannot give a package."""


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how.

    Attributes:
        run_dir: a student run folder with ``student.pt`` and ``student.json``.
        out: the package folder to create.
        held_out: folder of held-out BraTS cases (any layout Distill reads) for the parity
            gate; ``None`` uses ``n_phantoms`` synthetic phantoms at ``phantom_spacing`` mm.
        max_held_out: use at most this many held-out cases (sorted by id).
        label_convention: default output convention written in the manifest.
        thresholds: probability threshold per region (WT, TC, ET); ``None`` (default) takes the
            thresholds calibrated on the validation cases from the student card
            (``train-student`` with ``calibrate_thresholds``) and 0.5 each when the card has none.
            The manifest's ``output.threshold_source`` says which it was (absent for 0.5 each).
        postprocess: the package's default post-processing.
        simplify: run onnxruntime's basic offline graph optimisation on the exported graph.
        tensorrt: precisions of TensorRT engines to build now (needs TensorRT and a GPU).
        calibration_cache: teacher cache to draw INT8 calibration tiles from.
        calibration_tiles: how many INT8 calibration tiles.
        parity: pass marks of the onnxruntime gate.
        threads: CPU threads for torch and onnxruntime during the gate.
        tile, max_edge: sliding-window tile edge and the largest whole-volume edge (also the
            TensorRT profile's max), in voxels, rounded up to the network divisor.
        overwrite: replace an existing package at ``out``.
    """

    run_dir: Path
    out: Path
    held_out: Path | None = None
    max_held_out: int = 3
    n_phantoms: int = 2
    phantom_spacing: float = 4.0
    label_convention: str = "brats2017"
    thresholds: tuple[float, float, float] | None = None
    postprocess: PostprocessConfig = field(default_factory=lambda: PostprocessConfig(enforce_hierarchy=True))
    simplify: bool = False
    tensorrt: tuple[str, ...] = ()
    calibration_cache: Path | None = None
    calibration_tiles: int = 32
    parity: ParityThresholds = field(default_factory=ParityThresholds)
    threads: int | None = 2
    tile: int = 128
    max_edge: int = 256
    overwrite: bool = False


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_package` made."""

    package_dir: Path
    parameters: int
    onnx_bytes: int
    package_bytes: int
    parity: dict[str, Any]
    engines: tuple[str, ...]
    seconds: float

    def __str__(self) -> str:
        gate = self.parity["onnxruntime"]
        spread = gate.get("max_abs_uncertainty")
        return (f"{self.package_dir}: {self.parameters:,}-parameter student, ONNX {self.onnx_bytes / 1e6:.2f} MB, "
                f"package {self.package_bytes / 1e6:.2f} MB; "
                f"parity onnxruntime vs torch on {len(gate['cases'])} case(s): "
                f"max |dp| {gate['max_abs_probability']:.2g}, label agreement {gate['label_agreement']:.6f}"
                + (f", max |d uncertainty| {spread:.2g}" if spread is not None else "") + "; "
                f"engines: {', '.join(self.engines) or 'none'}; {self.seconds:.1f} s")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Reading the run folder


@dataclass(frozen=True)
class ExportableStudent:
    """A run folder's student rebuilt and checked to be one a package can serve."""

    model: torch.nn.Module
    run: StudentRun

    @property
    def config(self) -> StudentConfig:
        return self.run.card.student

    @property
    def card(self) -> StudentCard:
        return self.run.card


def read_exportable_student(run_dir: Path) -> ExportableStudent:
    """The student of a run folder, rebuilt from its card and loaded with ``weights_only=True``."""
    try:
        run = read_student_run(run_dir)
        model = run.load_model()
    except StudentCardError as exc:
        raise ExportConfigError(str(exc)) from exc
    _check_servable(run.card, run.card_path)
    return ExportableStudent(model, run)


def _check_servable(card: StudentCard, card_path: Path) -> None:
    config = card.student
    if config.output_kind != "sigmoid" or config.out_channels != len(REGIONS):
        raise ExportConfigError(
            f"{card_path}: packages serve region students (3 sigmoid outputs WT, TC, ET); this one outputs "
            f"{config.out_channels} {config.output_kind} channels"
        )
    if card.channels != REGIONS:
        raise ExportConfigError(f"{card_path}: output channels {list(card.channels)} are not {list(REGIONS)}")
    if config.in_channels != len(MODALITIES):
        raise ExportConfigError(
            f"{card_path}: the student reads {config.in_channels} channels; "
            f"BraTS packages need {len(MODALITIES)} ({', '.join(MODALITIES)})"
        )


def package_preprocess_config(card: StudentCard, divisor: int) -> PreprocessConfig:
    """The card's training preprocessing, padded to a multiple of the network divisor.

    Training let the network pad internally; padding here to the same multiple gives the
    network the same amount of zeros (placed around the brain crop rather than after it)
    and hands runtimes, TensorRT above all, shapes that are multiples of the divisor.
    """
    section = dict(card.data.preprocessing or {})
    spacing = section.get("target_spacing")
    card_divisor = int(section.get("divisor") or 1)
    return PreprocessConfig(
        target_spacing=tuple(float(s) for s in spacing) if spacing else None,  # type: ignore[arg-type]
        divisor=math.lcm(card_divisor, divisor),
        image_order=int(section.get("image_order", 1)),
    )


# ---------------------------------------------------------------------------------------------
# Held-out cases


def held_out_cases(config: ExportConfig, preprocessing: PreprocessConfig) -> tuple[list[ParityCase], str]:
    """Preprocessed parity cases and a description of where they came from."""
    if config.held_out is not None:
        cases = []
        for files in find_cases(config.held_out)[: config.max_held_out]:
            case = load_case(files, with_labels=False)
            cases.append(_parity_case(case.case_id, case.images, case.affine, preprocessing))
        # Case ids, not the folder's path: a package travels, and a local path means nothing elsewhere.
        return cases, f"{len(cases)} held-out case(s): {', '.join(c.case_id for c in cases)}"
    return phantom_parity_cases(config.n_phantoms, config.phantom_spacing, preprocessing), (
        f"{config.n_phantoms} synthetic phantom(s) at {config.phantom_spacing:g} mm "
        f"(seeds from {HELD_OUT_PHANTOM_SEED})"
    )


def phantom_parity_cases(n: int, spacing: float, preprocessing: PreprocessConfig,
                         seed: int = HELD_OUT_PHANTOM_SEED) -> list[ParityCase]:
    """``n`` synthetic phantoms, preprocessed as the package says (no patient data involved)."""
    from distill.data.phantoms import PhantomConfig, make_phantom

    cases = []
    for k in range(n):
        phantom = make_phantom(seed + k, PhantomConfig(spacing_mm=spacing))
        images = np.stack([phantom.images[m] for m in MODALITIES]).astype(np.float32)
        cases.append(_parity_case(f"phantom-{seed + k}", images, phantom.affine, preprocessing))
    return cases


def _parity_case(case_id: str, images: np.ndarray, affine: np.ndarray, preprocessing: PreprocessConfig) -> ParityCase:
    prepared = preprocess(images, affine, config=preprocessing, source=case_id)
    valid = tuple(slice(before, n - after)
                  for n, (before, after) in zip(prepared.images.shape[1:], prepared.record.pad))
    return ParityCase(case_id=case_id, images=prepared.images, valid=valid)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The manifest

DEFAULT_THRESHOLD = 0.5
#: ``output.threshold_source`` values: given to export, or calibrated on the card. The 0.5
#: default writes none, so a package of an uncalibrated student has the manifest it always had.
THRESHOLD_SOURCES = ("explicit", "student card calibration")


def package_thresholds(config: ExportConfig, card: StudentCard) -> tuple[tuple[float, ...], str | None]:
    """The per-region thresholds a package gets, and where they came from (:data:`THRESHOLD_SOURCES`).

    An explicit ``config.thresholds`` wins; else the card's calibrated thresholds; else 0.5 each
    (source ``None``).
    """
    if config.thresholds is not None:
        if len(config.thresholds) != len(REGIONS):
            raise ExportConfigError(f"thresholds take one value per region {list(REGIONS)}, "
                                    f"got {list(config.thresholds)}")
        return tuple(float(t) for t in config.thresholds), THRESHOLD_SOURCES[0]
    if card.calibration is not None:
        missing = [r for r in REGIONS if r not in card.calibration.thresholds]
        if missing:
            raise ExportConfigError(f"the student card's calibration has no threshold for {missing}; pass --thresholds")
        return tuple(card.calibration.thresholds[r] for r in REGIONS), THRESHOLD_SOURCES[1]
    return (DEFAULT_THRESHOLD,) * len(REGIONS), None


def build_manifest(config: ExportConfig, student: ExportableStudent, preprocessing: PreprocessConfig,
                   parity: dict[str, Any], held_out: str, simplified: bool) -> Manifest:
    """Everything but ``files`` (added by :func:`write_manifest`) and ``engines`` (added per build)."""
    card, model = student.card, student.model
    settings = default_inference_settings(student.config.in_channels, preprocessing.divisor,
                                          config.max_edge, config.tile)
    thresholds, threshold_source = package_thresholds(config, card)
    return Manifest(
        toolkit_version=__version__,
        created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        model=ModelSection(
            onnx=ONNX_NAME, weights=WEIGHTS_NAME,
            input=TensorSpec(INPUT_NAME, "B,C,X,Y,Z", "float32"),
            output=TensorSpec(OUTPUT_NAME, "B,K,X,Y,Z", "float32", values="logits"),
            dynamic_axes=("B", "X", "Y", "Z"), exporter=EXPORTER, opset=OPSET, simplified=simplified,
            torch_version=torch.__version__, onnx_version=_version_of("onnx"),
            student=student.config.to_dict(), parameters=count_parameters(model), macs_128=count_macs(model),
        ),
        inputs=inputs_section(MODALITIES),
        output=OutputSection(kind="sigmoid", regions=REGIONS, thresholds=dict(zip(REGIONS, thresholds)),
                             threshold_source=threshold_source),
        labels=labels_section(get_convention(config.label_convention)),
        preprocessing=preprocessing_section(preprocessing,
                                            card.data.preprocessing.get("normalisation", "zscore_in_brain_mask")),
        inference=settings,
        postprocessing=config.postprocess,
        source=SourceSection(
            student_card=card.summary(),
            student_card_sha256=file_sha256(student.run.card_path),
            student_weights_sha256=file_sha256(student.run.weights_path),
            teacher=card.data.teacher, teacher_identity_hash=card.data.teacher_identity_hash,
            training_preprocessing=dict(card.data.preprocessing),
        ),
        parity={"held_out": held_out, **parity},
        uncertainty=uncertainty_section(card) if has_uncertainty_head(model) else None,
    )  # fmt: skip


def uncertainty_section(card: StudentCard) -> UncertaintySection:
    """The manifest's ``uncertainty``: the second output, its units and range, and whose spread it learnt."""
    record = card.uncertainty_head
    if record is None:
        raise ExportConfigError("the student has an uncertainty head but its card has no uncertainty_head record; "
                                "re-run `distill train-student`")  # fmt: skip
    return UncertaintySection(
        output=TensorSpec(UNCERTAINTY_NAME, "B,K,X,Y,Z", "float32", values="standard deviation in [0, 0.5]"),
        regions=REGIONS, source=record.source, passes=record.passes, parameters=record.parameters,
    )  # fmt: skip


def _version_of(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


# ---------------------------------------------------------------------------------------------
# The export


def export_package(config: ExportConfig) -> ExportResult:
    """Export ``config.run_dir`` to the package folder ``config.out`` (see the module docstring).

    Raises:
        ExportConfigError: bad run folder, existing target, unusable options.
        ParityError: an exported model disagrees with torch; nothing is written.
        TensorRTUnavailable: TensorRT engines asked for where TensorRT cannot run.
    """
    start = time.perf_counter()
    out = Path(config.out)
    _check_target(out, config.overwrite)
    prepare_output_dir(out.parent, "folder of the package")
    get_convention(config.label_convention)  # fail on an unknown name before the slow steps
    if config.tensorrt:
        from distill.infer.tensorrt_runtime import require_tensorrt

        require_tensorrt()
    run = read_exportable_student(config.run_dir)
    if config.tensorrt and has_uncertainty_head(run.model):
        raise ExportConfigError(f"{config.run_dir}: TensorRT engines are not built for students with the uncertainty "
                                "head (its second output is not bound by the engine runner yet); export without "
                                "--tensorrt and serve it with torch or onnxruntime")  # fmt: skip
    preprocessing = package_preprocess_config(run.card, run.config.divisor)
    cases, held_out = held_out_cases(config, preprocessing)
    remove_stale_staging(out)  # what a killed export of this package left behind
    staging = staging_dir(out)
    try:
        engines = _write_package(staging, config, run, preprocessing, cases, held_out)
        package = ModelPackage.open(staging)  # what a user will open, verified before it gets its name
        _move_into_place(staging, out, config.overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(
        package_dir=out, parameters=package.parameters, onnx_bytes=(out / ONNX_NAME).stat().st_size,
        package_bytes=sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        parity=package.manifest.parity, engines=engines, seconds=time.perf_counter() - start,
    )  # fmt: skip


def _write_package(staging: Path, config: ExportConfig, run: ExportableStudent, preprocessing: PreprocessConfig,
                   cases: list[ParityCase], held_out: str) -> tuple[str, ...]:
    divisor = preprocessing.divisor
    # not multiples: the trace must not care
    example = (1, run.config.in_channels, 2 * divisor + 3, 2 * divisor + 1, divisor + 5)
    onnx_bytes = export_onnx(run.model, example)
    if config.simplify:
        onnx_bytes = simplify_onnx(onnx_bytes, output_names(run.model))
    # the uncertainty output, where there is one, is held to the probabilities' mark
    uncertainty = ((torch_uncertainty_fn(run.model), onnxruntime_uncertainty_fn(onnx_bytes, config.threads))
                   if has_uncertainty_head(run.model) else None)  # fmt: skip
    with torch_threads(config.threads):
        report = measure_parity("onnxruntime", torch_logits_fn(run.model),
                                onnxruntime_logits_fn(onnx_bytes, config.threads),
                                cases, config.parity, package_thresholds(config, run.card)[0],
                                get_convention(config.label_convention),
                                **({"uncertainty": uncertainty} if uncertainty else {}))  # fmt: skip
    report.raise_if_failed()
    (staging / ONNX_NAME).write_bytes(onnx_bytes)
    torch.save(run.model.state_dict(), staging / WEIGHTS_NAME)
    manifest = build_manifest(config, run, preprocessing, {"onnxruntime": report.to_dict()}, held_out, config.simplify)
    write_manifest(staging, manifest)
    return _build_engines(staging, config, cases)


def _build_engines(staging: Path, config: ExportConfig, cases: list[ParityCase]) -> tuple[str, ...]:
    if not config.tensorrt:
        return ()
    from distill.export.tensorrt_build import build_engines

    records = build_engines(ModelPackage.open(staging), config.tensorrt, cases,
                            calibration_cache=config.calibration_cache,
                            n_calibration_tiles=config.calibration_tiles, threads=config.threads)  # fmt: skip
    return tuple(r.path.name for r in records)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the block (``None`` leaves it)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise ExportConfigError(f"{out}: already exists; choose another folder or pass --overwrite")
    if out.exists() and not (out / MANIFEST_NAME).is_file():
        raise ExportConfigError(f"{out}: exists and is not a model package; refusing to replace it")


def _move_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename ``staging`` to ``out``; an old package is moved aside first and removed after."""
    old = None
    if out.exists() and overwrite:
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["ExportConfig", "ExportConfigError", "ExportResult", "ExportableStudent", "export_package", "held_out_cases",
           "package_preprocess_config", "package_thresholds", "phantom_parity_cases",
           "read_exportable_student", "uncertainty_section"]  # fmt: skip
