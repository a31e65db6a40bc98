"""Loading one case: four co-registered modalities as a channel stack, plus its label map."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.data.discovery import MODALITIES, CaseFiles
from distill.data.nifti import Volume, read_nifti, voxel_spacing
from distill.errors import DataError

# Affines of co-registered BraTS files agree to float32 precision; allow a little slack.
AFFINE_ATOL = 1e-3


@dataclass
class Case:
    """One case in memory.

    Attributes:
        case_id: identifier.
        images: float32 array ``(C, X, Y, Z)``, channels in ``MODALITIES`` order.
        affine: 4x4 voxel-to-world matrix shared by every file of the case.
        labels: uint8 label map ``(X, Y, Z)`` in the file's own convention, or ``None``.
        files: where it came from.
    """

    case_id: str
    images: np.ndarray
    affine: np.ndarray
    labels: np.ndarray | None
    files: CaseFiles | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        return voxel_spacing(self.affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def check_same_geometry(reference: Volume, other: Volume) -> None:
    """Raise :class:`DataError` naming both files if shape or affine differ."""
    if reference.data.shape != other.data.shape:
        raise DataError(
            f"{other.path}: shape {other.data.shape} differs from {reference.path} with shape {reference.data.shape}; "
            "all files of a case must be on the same grid"
        )
    diff = float(np.max(np.abs(reference.affine - other.affine)))
    if diff > AFFINE_ATOL:
        raise DataError(
            f"{other.path}: affine differs from {reference.path} by up to {diff:.4g} "
            f"(limit {AFFINE_ATOL}); all files of a case must be co-registered.\n"
            f"  {reference.path.name if reference.path else 'reference'}: {np.round(reference.affine, 4).tolist()}\n"
            f"  {other.path.name if other.path else 'other'}: {np.round(other.affine, 4).tolist()}"
        )


def read_label_map(path: Path) -> Volume:
    """Read a label map and check that it holds small non-negative integers."""
    volume = read_nifti(path)
    data = volume.data
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise DataError(f"{path}: label map holds non-integer values")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise DataError(f"{path}: label values must lie in 0..255, found {data.min()}..{data.max()}")
    return Volume(data=data.astype(np.uint8), affine=volume.affine, path=path)


def load_case(files: CaseFiles, with_labels: bool = True) -> Case:
    """Read the four modalities (and the label map) and check they share one grid."""
    volumes = [read_nifti(files.images[m], dtype=np.float32) for m in MODALITIES]
    for volume in volumes[1:]:
        check_same_geometry(volumes[0], volume)
    labels = None
    if with_labels and files.label is not None:
        label_volume = read_label_map(files.label)
        check_same_geometry(volumes[0], label_volume)
        labels = label_volume.data
    images = np.stack([v.data for v in volumes]).astype(np.float32, copy=False)
    return Case(case_id=files.case_id, images=images, affine=volumes[0].affine, labels=labels, files=files)
