"""Reading and writing NIfTI volumes with checks that name the file and the problem.

Reading checks the header before any voxel data is touched (nibabel allocates what the
header claims), then the data itself (truncation, NaN/Inf). Writing builds a fresh header
that carries geometry only, so nothing from an input header (``descrip``, ``aux_file``,
``intent_name``, ``db_name``, extensions; places where patient data hides) is copied, and
writes atomically.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from distill.core.atomic import atomic_write_bytes
from distill.errors import DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# A BraTS volume is 240x240x155 = 8.9 M voxels, a 0.5 mm whole-head scan ~120 M. A header
# claiming more than 512^3 (134 M voxels, 0.5 GB as float32) or an edge over 2048 voxels is
# corrupt or hostile; it is refused before nibabel allocates what it claims.
DEFAULT_MAX_VOXELS = 512**3
MAX_EDGE = 2048
GZIP_LEVEL = 4


@dataclass(frozen=True)
class Volume:
    """A 3D array with its voxel-to-world affine (RAS+ world, millimetres)."""

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm, from the affine's column norms (robust to headers with bad pixdim)."""
        return voxel_spacing(self.affine)


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths in mm of a 4x4 affine."""
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def is_nifti_path(path: str | Path) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """``case_t1.nii.gz`` -> ``case_t1``."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_header(path: str | Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> nib.Nifti1Image:
    """Open a NIfTI file lazily and validate its header; no voxel data is read.

    Raises :class:`DataError` if the file is missing, not NIfTI, not 3D, has a non-numeric
    data type, or claims more than ``max_voxels`` voxels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not is_nifti_path(path):
        raise DataError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for garbage input
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: not a NIfTI-1/2 image (got {type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, header says shape {tuple(img.shape)}")
    if min(shape) < 1:
        raise DataError(f"{path}: header has an empty dimension, shape {shape}")
    if max(shape) > MAX_EDGE:
        raise DataError(f"{path}: header claims shape {shape}, an edge over {MAX_EDGE} voxels; the file is corrupt")
    n_voxels = int(np.prod(shape, dtype=np.int64))
    if n_voxels > max_voxels:
        raise DataError(f"{path}: header claims {n_voxels} voxels (shape {shape}), more than the limit {max_voxels} "
                        "(raise it with --max-voxels if the scan is real)")  # fmt: skip
    dtype = img.header.get_data_dtype()
    if dtype.kind not in "biuf":
        raise DataError(f"{path}: unsupported voxel data type {dtype}")
    _check_uncompressed_size(path, img, n_voxels * dtype.itemsize)
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-12:
        raise DataError(f"{path}: header has an invalid (singular or non-finite) affine")
    return img


def _check_uncompressed_size(path: Path, img: nib.Nifti1Image, data_bytes: int) -> None:
    """An uncompressed file must hold the data its header promises; checked from the file size,
    so a truncated or lying ``.nii`` is refused without allocating (a ``.nii.gz`` is caught while
    reading)."""
    if str(path).endswith(".gz"):
        return
    offset = int(img.header.get("vox_offset", 352))
    size = path.stat().st_size
    if size < offset + data_bytes:
        raise DataError(f"{path}: file holds {size} bytes but its header promises {offset + data_bytes}; "
                        "the file is truncated or its header is wrong")  # fmt: skip


def read_nifti(
    path: str | Path,
    dtype: np.dtype | type | None = None,
    check_finite: bool = True,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Volume:
    """Read a 3D NIfTI volume; raise :class:`DataError` naming ``path`` on any problem.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: cast the data to this type (``None`` keeps the stored type, scaling applied).
        check_finite: refuse volumes containing NaN or Inf.
        max_voxels: refuse headers claiming more voxels than this before reading data.
    """
    path = Path(path)
    img = read_header(path, max_voxels)
    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise DataError(f"{path}: truncated or corrupt voxel data ({type(exc).__name__}: {exc})") from exc
    data = np.asarray(raw).reshape(img.shape[:3])
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if check_finite and data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise DataError(f"{path}: {bad} voxels are NaN or Inf")
    return Volume(data=data, affine=np.asarray(img.affine, dtype=np.float64), path=path)


def _storable(data: np.ndarray) -> np.ndarray:
    """``data`` in a NIfTI-1 type that holds it exactly: booleans and 32/64-bit integers (e.g. a
    label map computed with numpy's default int) become the smallest of uint8 / int16 that fits."""
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype.kind in "iu" and data.dtype.itemsize > 2:
        low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
        for narrow in (np.uint8, np.int16):
            info = np.iinfo(narrow)
            if info.min <= low and high <= info.max:
                return data.astype(narrow)
    return data


def nifti_bytes(data: np.ndarray, affine: np.ndarray, gzip_output: bool) -> bytes:
    """Serialise ``data`` with a fresh header holding only geometry and data type."""
    data = _storable(np.asarray(data))
    affine = np.asarray(affine, dtype=np.float64)
    header = nib.Nifti1Header()
    # A fresh header says float32; without this a uint8 label map would be stored as scaled floats.
    header.set_data_dtype(data.dtype)
    img = nib.Nifti1Image(data, affine, header=header)
    if np.issubdtype(data.dtype, np.integer):
        img.header.set_slope_inter(np.nan, np.nan)  # unset: the stored integers are the values
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0) if gzip_output else raw


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data`` (3D) with ``affine`` to ``path`` (``.nii`` or ``.nii.gz``) atomically."""
    path = Path(path)
    if not is_nifti_path(path):
        raise DataError(f"{path}: output name must end in .nii or .nii.gz")
    if np.asarray(data).ndim != 3:
        raise ValueError(f"write_nifti expects a 3D array, got shape {np.asarray(data).shape}")
    return atomic_write_bytes(path, nifti_bytes(data, affine, gzip_output=str(path).endswith(".gz")))
