"""``distill predict``: segment every case of a folder with a model package.

Reads cases in any layout Distill knows (BraTS 2017-21, 2023+, nnU-Net raw; one folder per
case or flat), writes ``<output>/<case_id>.nii.gz`` label maps on each case's own grid in the
requested convention (fresh headers, atomic writes), and optionally
``<case_id>_probabilities.npz`` (``probabilities`` and ``uncertainty``, float16 ``(3, X, Y, Z)``;
that ``uncertainty`` is the binary entropy of the student's own probabilities, in bits) and
``<case_id>_uncertainty.nii.gz`` (``save_uncertainty``, packages with the distilled-uncertainty
head only): one 4D float32 NIfTI ``(X, Y, Z, 3)``, regions WT, TC, ET along the 4th axis, on
the case's grid and affine, unscaled, holding the predicted standard deviation of the teacher
ensemble's per-pass probabilities in [0, 0.5] (0 outside the brain's bounding box).

A case's label map is written last, so its presence marks the case done: ``skip_existing``
resumes a killed run, and temporaries a killed run left are removed first. Resuming is only
allowed with the package and label convention that made the existing maps (recorded in
``distill_predict.json``). With ``continue_on_error`` a case that fails (a bad file, a
constant modality) is recorded with its one-line reason in ``failures.json`` and the run goes
on; without it the first failure stops the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distill.core.atomic import atomic_path, atomic_write_bytes, atomic_write_json
from distill.core.paths import prepare_output_dir, remove_stale_partials
from distill.core.provenance import claim_output
from distill.data.case import load_case
from distill.data.conventions import get_convention
from distill.data.discovery import MODALITIES, CaseFiles, find_cases
from distill.data.nifti import DEFAULT_MAX_VOXELS, nifti_bytes, write_nifti
from distill.errors import DataError, DistillError
from distill.infer.backends import BackendSpec
from distill.infer.predictor import Predictor
from distill.package import ModelPackage


@dataclass(frozen=True)
class PredictConfig:
    """What to segment and with which backend.

    Attributes:
        package: a model package folder (from ``distill export``).
        input_dir: folder of cases.
        output_dir: receives one label map per case.
        backend: see :class:`distill.infer.backends.BackendSpec`.
        label_convention: output convention (``None``: the package's).
        save_probabilities: also write ``<case_id>_probabilities.npz``.
        save_uncertainty: also write ``<case_id>_uncertainty.nii.gz``, the distilled uncertainty
            (module docstring); a package without it is refused before any case.
        skip_existing: leave cases whose label map already exists (resume a killed run).
        progress: show a progress bar.
        continue_on_error: record a failing case in ``failures.json`` and go on.
        max_voxels: refuse input files whose header claims more voxels, before reading them.
        tta: test-time augmentation, ``"none"`` or ``"mirror8"`` (:class:`Predictor`).
    """

    package: Path
    input_dir: Path
    output_dir: Path
    backend: BackendSpec = field(default_factory=BackendSpec)
    label_convention: str | None = None
    save_probabilities: bool = False
    save_uncertainty: bool = False
    skip_existing: bool = False
    progress: bool = True
    continue_on_error: bool = False
    max_voxels: int = DEFAULT_MAX_VOXELS
    tta: str = "none"


@dataclass(frozen=True)
class PredictResult:
    output_dir: Path
    written: tuple[str, ...]
    skipped: tuple[str, ...]
    backend: str
    convention: str
    seconds: float
    failed: dict[str, str] = field(default_factory=dict)
    failures_path: Path | None = None

    def __str__(self) -> str:
        per_case = f", {self.seconds / len(self.written):.2f} s/case" if self.written else ""
        text = (f"{self.output_dir}: {len(self.written)} case(s) segmented with {self.backend} "
                f"({self.convention} labels){per_case}; {len(self.skipped)} already present")  # fmt: skip
        if self.failed:
            text += f"; {len(self.failed)} failed (listed in {self.failures_path})"
        return text


RECORD_NAME = "distill_predict.json"
UNCERTAINTY_SUFFIX = "_uncertainty.nii.gz"
FAILURES_NAME = "failures.json"


def predict_folder(config: PredictConfig) -> PredictResult:
    """Segment every case under ``config.input_dir`` (see the module docstring).

    Raises:
        DataError: the output folder is unusable or was made with another package or
            convention (with ``skip_existing``), no case was found, or (without
            ``continue_on_error``) a case failed; the message names the file.
    """
    start = time.perf_counter()
    output_dir = Path(config.output_dir)
    if output_dir.resolve() == Path(config.input_dir).resolve():
        raise DataError(f"{output_dir}: the output folder must differ from the input folder")
    predictor = Predictor.from_package(config.package, config.backend, tta=config.tta)
    if config.save_uncertainty:
        predictor.check_distilled_uncertainty()  # before any case, naming the package
    incomplete: dict[str, str] = {}
    cases = find_cases(config.input_dir, incomplete=incomplete if config.continue_on_error else None)
    convention = config.label_convention or predictor.package.convention.name
    get_convention(convention)  # an unknown name fails before any case
    prepare_output_dir(output_dir)
    remove_stale_partials(output_dir)
    (output_dir / FAILURES_NAME).unlink(missing_ok=True)  # a list from an earlier run would mislead
    _claim(output_dir, predictor.package, convention, config.skip_existing, config.tta)
    written, skipped, failed = [], [], dict(incomplete)
    # closed on the way out, also on an error: the message then starts on a line of its own
    with tqdm(cases, desc="predict", unit="case", disable=not config.progress) as bar:
        for files in bar:
            target = output_dir / f"{files.case_id}.nii.gz"
            if config.skip_existing and target.is_file():
                skipped.append(files.case_id)
                continue
            try:
                _segment_case(predictor, files, target, convention, config)
            except DistillError as exc:
                if not config.continue_on_error:
                    raise
                failed[files.case_id] = str(exc).splitlines()[0]
                # a map an earlier run left for this case is not this run's result
                target.unlink(missing_ok=True)
                target.with_name(f"{files.case_id}_probabilities.npz").unlink(missing_ok=True)
                target.with_name(f"{files.case_id}{UNCERTAINTY_SUFFIX}").unlink(missing_ok=True)
                continue
            written.append(files.case_id)
    n_cases = len(cases) + len(incomplete)
    failures_path = _write_failures(output_dir, failed, n_cases) if config.continue_on_error else None
    return PredictResult(output_dir, tuple(written), tuple(skipped), config.backend.label, convention,
                         time.perf_counter() - start, failed, failures_path)  # fmt: skip


def _segment_case(predictor: Predictor, files: CaseFiles, target: Path, convention: str,
                  config: PredictConfig) -> None:  # fmt: skip
    case = load_case(files, with_labels=False, max_voxels=config.max_voxels)
    keep_maps = config.save_probabilities
    try:
        result = predictor.segment(case.images, case.affine, label_convention=convention,
                                   return_probabilities=keep_maps, return_uncertainty=keep_maps,
                                   **({"return_distilled_uncertainty": True} if config.save_uncertainty else {}))
    except DataError as exc:  # raised on arrays: say which case
        raise DataError(f"case {files.case_id} ({files.images[MODALITIES[0]].parent}): {exc}") from exc
    if config.save_probabilities:
        _write_probabilities(target.with_name(f"{files.case_id}_probabilities.npz"), result.probabilities,
                             result.uncertainty)  # fmt: skip
    if config.save_uncertainty:
        write_uncertainty_nifti(target.with_name(f"{files.case_id}{UNCERTAINTY_SUFFIX}"),
                                result.distilled_uncertainty, case.affine)  # fmt: skip
    write_nifti(target, result.labels, case.affine)  # last: its presence marks the case done


def _claim(output_dir: Path, package: ModelPackage, convention: str, resuming: bool, tta: str = "none") -> None:
    """Resuming needs the package, convention and test-time augmentation that made the maps present;
    a full run re-records."""
    options = {"package_onnx_sha256": package.onnx_sha256, "thresholds": list(package.thresholds),
               "label_convention": convention}  # fmt: skip
    if tta != "none":  # recorded only when used, so folders written before the option still resume
        options["tta"] = tta
    flags = {"package_onnx_sha256": "PACKAGE (its model.onnx)", "thresholds": "PACKAGE (its thresholds)",
             "label_convention": "--label-convention", "tta": "--tta"}  # fmt: skip
    if not resuming:
        (output_dir / RECORD_NAME).unlink(missing_ok=True)  # every case is rewritten by this run
    claim_output(output_dir, RECORD_NAME, "distill predict", options, flags)


def _write_failures(output_dir: Path, failed: dict[str, str], n_cases: int) -> Path:
    """``failures.json``: ``{"n_cases", "n_failed", "failures": {case: reason}}``, written every run."""
    return atomic_write_json(output_dir / FAILURES_NAME,
                             {"n_cases": n_cases, "n_failed": len(failed), "failures": failed})  # fmt: skip


def _write_probabilities(path: Path, probabilities: np.ndarray, uncertainty: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh, probabilities=probabilities.astype(np.float16), uncertainty=uncertainty.astype(np.float16)
        )


def write_uncertainty_nifti(path: Path, uncertainty: np.ndarray, affine: np.ndarray) -> Path:
    """The distilled uncertainty ``(3, X, Y, Z)`` as one 4D float32 NIfTI ``(X, Y, Z, 3)``, regions last."""
    channels_last = np.ascontiguousarray(np.moveaxis(np.asarray(uncertainty, dtype=np.float32), 0, -1))
    return atomic_write_bytes(path, nifti_bytes(channels_last, affine, gzip_output=True))


__all__ = ["UNCERTAINTY_SUFFIX", "PredictConfig", "PredictResult", "predict_folder", "write_uncertainty_nifti"]
