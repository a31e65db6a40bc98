"""Loading one case: four co-registered modalities as a channel stack, plus its label map."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.data.discovery import MODALITIES, CaseFiles
from distill.data.nifti import DEFAULT_MAX_VOXELS, Volume, read_nifti, voxel_spacing
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


def read_label_map(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read a label map and check that it holds small non-negative integers."""
    volume = read_nifti(path, max_voxels=max_voxels)
    data = volume.data
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise DataError(f"{path}: label map holds non-integer values")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise DataError(f"{path}: label values must lie in 0..255, found {data.min()}..{data.max()}")
    return Volume(data=data.astype(np.uint8), affine=volume.affine, path=path)


def check_not_constant(data: np.ndarray, where: str) -> None:
    """Refuse an image whose voxels all hold one value (an all-zero file stands in for a missing
    scan): normalisation would turn it into zeros and the network would segment without that
    modality, silently worse. ``where`` names the file or channel."""
    if data.size and np.min(data) == np.max(data):
        raise DataError(f"{where}: every voxel holds the same value ({float(data.flat[0]):g}); "
                        "the image is empty or a placeholder, and all four modalities are needed")  # fmt: skip


def load_case(files: CaseFiles, with_labels: bool = True, max_voxels: int = DEFAULT_MAX_VOXELS) -> Case:
    """Read the four modalities (and the label map) and check they share one grid.

    Raises :class:`DataError` naming the file when one is unreadable, larger than
    ``max_voxels`` (checked on its header, before any data is read), constant, or off the
    case's grid.
    """
    volumes = [read_nifti(files.images[m], dtype=np.float32, max_voxels=max_voxels) for m in MODALITIES]
    for volume in volumes[1:]:
        check_same_geometry(volumes[0], volume)
    for volume in volumes:
        check_not_constant(volume.data, f"{volume.path} (case {files.case_id})")
    labels = None
    if with_labels and files.label is not None:
        label_volume = read_label_map(files.label, max_voxels)
        check_same_geometry(volumes[0], label_volume)
        labels = label_volume.data
    images = np.stack([v.data for v in volumes]).astype(np.float32, copy=False)
    return Case(case_id=files.case_id, images=images, affine=volumes[0].affine, labels=labels, files=files)
