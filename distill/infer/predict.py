"""``distill predict``: segment every case of a folder with a model package.

Reads cases in any layout Distill knows (BraTS 2017-21, 2023+, nnU-Net raw; one folder per
case or flat), writes ``<output>/<case_id>.nii.gz`` label maps on each case's own grid in the
requested convention (fresh headers, atomic writes), and optionally
``<case_id>_probabilities.npz`` (``probabilities`` and ``uncertainty``, float16 ``(3, X, Y, Z)``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distill.core.atomic import atomic_path
from distill.data.case import load_case
from distill.data.discovery import find_cases
from distill.data.nifti import write_nifti
from distill.errors import DataError
from distill.infer.backends import BackendSpec
from distill.infer.predictor import Predictor


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
        skip_existing: leave cases whose label map already exists (resume a killed run).
        progress: show a progress bar.
    """

    package: Path
    input_dir: Path
    output_dir: Path
    backend: BackendSpec = field(default_factory=BackendSpec)
    label_convention: str | None = None
    save_probabilities: bool = False
    skip_existing: bool = False
    progress: bool = True


@dataclass(frozen=True)
class PredictResult:
    output_dir: Path
    written: tuple[str, ...]
    skipped: tuple[str, ...]
    backend: str
    convention: str
    seconds: float

    def __str__(self) -> str:
        per_case = f", {self.seconds / len(self.written):.2f} s/case" if self.written else ""
        return (f"{self.output_dir}: {len(self.written)} case(s) segmented with {self.backend} "
                f"({self.convention} labels){per_case}; {len(self.skipped)} already present")  # fmt: skip


def predict_folder(config: PredictConfig) -> PredictResult:
    """Segment every case under ``config.input_dir`` (see the module docstring)."""
    start = time.perf_counter()
    output_dir = Path(config.output_dir)
    if output_dir.resolve() == Path(config.input_dir).resolve():
        raise DataError(f"{output_dir}: the output folder must differ from the input folder")
    predictor = Predictor.from_package(config.package, config.backend)
    cases = find_cases(config.input_dir)
    convention = config.label_convention or predictor.package.convention.name
    written, skipped = [], []
    for files in tqdm(cases, desc="predict", unit="case", disable=not config.progress):
        target = output_dir / f"{files.case_id}.nii.gz"
        if config.skip_existing and target.is_file():
            skipped.append(files.case_id)
            continue
        case = load_case(files, with_labels=False)
        keep_maps = config.save_probabilities
        result = predictor.segment(case.images, case.affine, label_convention=convention,
                                   return_probabilities=keep_maps, return_uncertainty=keep_maps)  # fmt: skip
        if config.save_probabilities:
            _write_probabilities(
                output_dir / f"{files.case_id}_probabilities.npz", result.probabilities, result.uncertainty
            )
        write_nifti(target, result.labels, case.affine)  # last: its presence marks the case done
        written.append(files.case_id)
    return PredictResult(
        output_dir, tuple(written), tuple(skipped), config.backend.label, convention, time.perf_counter() - start
    )


def _write_probabilities(path: Path, probabilities: np.ndarray, uncertainty: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh, probabilities=probabilities.astype(np.float16), uncertainty=uncertainty.astype(np.float16)
        )


__all__ = ["PredictConfig", "PredictResult", "predict_folder"]
