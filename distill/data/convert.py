"""Writing an nnU-Net v2 raw dataset from BraTS cases in any naming and label convention.

The result matches what nnU-Net's own BraTS conversion produces: channels ``_0000..0003`` =
T1, T1ce, T2, FLAIR; labels rewritten to nnU-Net's internal numbering (1 oedema, 2 NCR,
3 ET); a region-based ``dataset.json`` (whole tumour, tumour core, enhancing tumour with
``regions_class_order``), so a model trained on it outputs three sigmoid region channels.
Optionally every case is resampled to a target spacing first (e.g. 2 mm for CPU work).

Each file is written atomically and ``dataset.json`` last, so an interrupted conversion
is never mistaken for a finished one; running again skips cases already complete.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from distill import __version__
from distill.core.atomic import atomic_write_json
from distill.core.paths import prepare_output_dir, remove_stale_partials
from distill.core.provenance import claim_output
from distill.data.case import load_case
from distill.data.conventions import get_convention, resolve_convention
from distill.data.discovery import MODALITIES, CaseFiles, find_cases
from distill.data.nifti import voxel_spacing, write_nifti
from distill.data.preprocess import resample, resample_labels, resampled_affine, resampled_shape
from distill.errors import DataError

NNUNET_CHANNEL_NAMES = {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
NNUNET_REGION_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
NNUNET_REGIONS_CLASS_ORDER = [1, 2, 3]
FILE_ENDING = ".nii.gz"


def nnunet_region_fields(n_training: int) -> dict[str, Any]:
    """The ``dataset.json`` entries of region-based BraTS training (WT, TC, ET), in nnU-Net's numbering.

    Callers add their own ``name``, ``description`` and extras around these; key order is
    theirs to keep, since nnU-Net copies the file into the model folder and the teacher's
    identity hash covers its bytes.
    """
    return {
        "channel_names": NNUNET_CHANNEL_NAMES,
        "labels": NNUNET_REGION_LABELS,
        "regions_class_order": NNUNET_REGIONS_CLASS_ORDER,
        "numTraining": n_training,
        "file_ending": FILE_ENDING,
    }


@dataclass(frozen=True)
class NnUNetDatasetWriter:
    """The nnU-Net v2 raw dataset layout, the one place that knows it.

    ``images{Tr,Ts}/<id>_<channel:04d>.nii.gz`` (training cases have a label map, test
    cases do not), ``labelsTr/<id>.nii.gz`` and ``dataset.json``. Every file is written
    atomically, a case's images before its label map, so a case whose files all exist was
    finished; ``dataset.json`` is the caller's to write last.
    """

    dataset_dir: Path
    n_channels: int = len(MODALITIES)

    @property
    def labels_dir(self) -> Path:
        return Path(self.dataset_dir) / "labelsTr"

    def image_paths(self, case_id: str, training: bool = True) -> list[Path]:
        folder = Path(self.dataset_dir) / ("imagesTr" if training else "imagesTs")
        return [folder / f"{case_id}_{channel:04d}{FILE_ENDING}" for channel in range(self.n_channels)]

    def label_path(self, case_id: str) -> Path:
        return self.labels_dir / f"{case_id}{FILE_ENDING}"

    def case_paths(self, case_id: str, training: bool = True) -> list[Path]:
        """Every file of one case, images in channel order, then the label map of a training case."""
        paths = self.image_paths(case_id, training)
        return [*paths, self.label_path(case_id)] if training else paths

    def write_case(
        self, case_id: str, images: Sequence[np.ndarray], affine: np.ndarray, labels: np.ndarray | None = None
    ) -> None:
        """Write one case as given (dtypes are the caller's).

        ``labels`` are in nnU-Net's numbering; ``None`` makes it a test case (``imagesTs``).
        """
        if len(images) != self.n_channels:
            raise ValueError(f"case {case_id}: {len(images)} image channels, the dataset has {self.n_channels}")
        for path, image in zip(self.image_paths(case_id, training=labels is not None), images):
            write_nifti(path, image, affine)
        if labels is not None:
            write_nifti(self.label_path(case_id), labels, affine)

    def write_dataset_json(self, dataset: Mapping[str, Any]) -> Path:
        return atomic_write_json(Path(self.dataset_dir) / "dataset.json", dict(dataset))


@dataclass(frozen=True)
class ConvertConfig:
    """Arguments of :func:`convert_to_nnunet`.

    Attributes:
        source: folder of BraTS cases (any naming) or an nnU-Net raw dataset.
        out_root: folder that receives ``Dataset<id>_<name>/`` (nnU-Net's ``nnUNet_raw``).
        dataset_id: nnU-Net dataset number (1-999).
        dataset_name: name part, letters, digits and underscores.
        label_convention: convention of the source labels, or ``"auto"`` to detect it.
        target_spacing: resample to this spacing in mm, or ``None`` to keep the grid.
    """

    source: Path
    out_root: Path
    dataset_id: int = 500
    dataset_name: str = "BraTS"
    label_convention: str = "auto"
    target_spacing: tuple[float, float, float] | None = None
    progress: bool = True

    @property
    def dataset_dir(self) -> Path:
        return Path(self.out_root) / f"Dataset{self.dataset_id:03d}_{self.dataset_name}"


@dataclass(frozen=True)
class ConvertResult:
    dataset_dir: Path
    n_training: int
    n_test: int
    n_written: int
    n_skipped: int
    seconds: float


def _validate(config: ConvertConfig) -> None:
    if not 1 <= config.dataset_id <= 999:
        raise DataError(f"dataset id must be 1..999, got {config.dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", config.dataset_name):
        raise DataError(f"dataset name {config.dataset_name!r} may only hold letters, digits and underscores")


def _compact(array: np.ndarray) -> np.ndarray:
    """int16 where the values are whole numbers that fit (most raw MRI), float32 otherwise."""
    if np.all(array == np.round(array)) and array.min() >= -32768 and array.max() <= 32767:
        return array.astype(np.int16)
    return array.astype(np.float32)


def convert_case(case_files: CaseFiles, dataset_dir: Path, label_convention: str, target_spacing) -> None:
    """Convert one case: read and check it, relabel, optionally resample, write atomically."""
    case = load_case(case_files)
    images, labels, affine = case.images, case.labels, case.affine
    if labels is not None:
        source_convention = resolve_convention(
            label_convention, np.unique(labels), case_files.layout, source=str(case_files.label)
        )
        labels = source_convention.convert_to(labels, get_convention("nnunet"), source=str(case_files.label))
    if target_spacing is not None:
        shape = resampled_shape(case.shape, voxel_spacing(affine), target_spacing)
        affine = resampled_affine(affine, case.shape, shape)
        images = resample(images, shape, order=1)
        labels = resample_labels(labels, shape) if labels is not None else None
    NnUNetDatasetWriter(dataset_dir).write_case(
        case_files.case_id,
        [_compact(images[channel]) for channel in range(len(MODALITIES))],
        affine,
        labels.astype(np.uint8) if labels is not None else None,
    )


def _dataset_json(config: ConvertConfig, n_training: int) -> dict:
    return {
        **nnunet_region_fields(n_training),
        "name": config.dataset_name,
        "description": "BraTS cases converted by Distill; labels in nnU-Net's internal numbering (1 ED, 2 NCR, 3 ET).",
        "distill": {
            "version": __version__,
            "source_label_convention": config.label_convention,
            "target_spacing": list(config.target_spacing) if config.target_spacing else None,
        },
    }


RECORD_NAME = "distill_convert.json"
_RECORD_FLAGS = {"source": "SOURCE", "label_convention": "--label-convention", "target_spacing": "--spacing"}


def _record_options(config: ConvertConfig) -> dict[str, Any]:
    """The options that decide the converted files (the dataset id and name are in the folder's name)."""
    return {"source": str(Path(config.source).resolve()), "label_convention": config.label_convention,
            "target_spacing": list(config.target_spacing) if config.target_spacing else None}  # fmt: skip


def _legacy_options(config: ConvertConfig) -> dict[str, Any] | None:
    """Options of a dataset converted before records were written, from its ``dataset.json``."""
    try:
        recorded = json.loads((config.dataset_dir / "dataset.json").read_text())["distill"]
        options = {"label_convention": recorded["source_label_convention"],
                   "target_spacing": recorded["target_spacing"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {**_record_options(config), **options}  # the source was not recorded: taken as the same


def convert_to_nnunet(config: ConvertConfig) -> ConvertResult:
    """Write ``config.dataset_dir`` from the cases under ``config.source``; skip complete cases.

    A rerun into an existing dataset resumes it only with the options that made it (the source
    folder, ``label_convention`` and ``target_spacing``, recorded in ``distill_convert.json``);
    with any other it stops, naming the option, before touching a file.
    """
    _validate(config)
    if config.label_convention != "auto":
        get_convention(config.label_convention)  # fail before any work on a typo
    cases = find_cases(config.source)
    start = time.perf_counter()
    written = skipped = 0
    dataset_dir = prepare_output_dir(config.dataset_dir, "dataset folder")
    remove_stale_partials(dataset_dir, depth=2)  # imagesTr/, labelsTr/, imagesTs/
    claim_output(dataset_dir, RECORD_NAME, "distill data convert", _record_options(config),
                 flags=_RECORD_FLAGS, legacy=_legacy_options(config))  # fmt: skip
    writer = NnUNetDatasetWriter(dataset_dir)
    # closed on the way out, also on an error: the message then starts on a line of its own
    with tqdm(cases, desc="convert", unit="case", disable=not config.progress) as bar:
        for case in bar:
            if all(p.is_file() for p in writer.case_paths(case.case_id, training=case.label is not None)):
                skipped += 1
                continue
            convert_case(case, dataset_dir, config.label_convention, config.target_spacing)
            written += 1
    n_training = sum(c.label is not None for c in cases)
    writer.write_dataset_json(_dataset_json(config, n_training))
    return ConvertResult(
        dataset_dir=dataset_dir,
        n_training=n_training,
        n_test=len(cases) - n_training,
        n_written=written,
        n_skipped=skipped,
        seconds=time.perf_counter() - start,
    )
