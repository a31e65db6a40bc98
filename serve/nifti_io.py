"""Bounded, validated NIfTI decoding of uploads, and fresh-header NIfTI output.

An upload is untrusted bytes, possibly gzipped (a 1 MB gzip can hold 1 GB). Decoding goes:

1. decompress only the header (348 bytes for NIfTI-1, 540 for NIfTI-2), never more;
2. check it before any voxel data is decoded: single-file magic, dimensions (3D, or 4D with
   one volume, or 4D with one volume per channel where allowed), voxel count, data type,
   finite positive spacing, finite non-singular affine, vox_offset, scaling; the bytes it
   declares must fit the per-part limit;
3. decompress exactly the declared bytes, in slices (``zlib`` ``max_length``), so no more than
   the limit ever exists in memory, and refuse a stream that ends early or goes on;
4. read the voxels with nibabel from those bytes, exactly as ``distill predict`` reads a file
   (:func:`distill.data.nifti.read_nifti`: the stored type, scaling applied, then float32), so
   the service and the CLI segment identical arrays; refuse NaN/Inf.

Output is built by :func:`distill.data.nifti.nifti_bytes`: a fresh header with geometry only
(nothing of ``descrip``, ``aux_file``, ``intent_name``, ``db_name`` or extensions is copied).
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from distill.data.nifti import nifti_bytes, voxel_spacing
from serve.errors import ServeError

GZIP_MAGIC = b"\x1f\x8b"
HEADER_SIZES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
#: Extensions between the header and the voxels: allowed, but not more than this.
MAX_EXTENSION_BYTES = 1024 * 1024
#: Voxel edge lengths outside this range (mm) are refused as corrupt.
SPACING_RANGE = (1e-3, 100.0)
_INPUT_SLICE = 1024 * 1024
#: Larger magnitudes are not MRI intensities, and their squares overflow float32 statistics.
MAX_INTENSITY = 1e9
#: bgzip writes one member per 64 KiB; far more than a 256 MiB part needs.
MAX_GZIP_MEMBERS = 8192


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds for one part: decompressed bytes, voxels per channel, and the 4D channel count allowed."""

    max_part_bytes: int
    max_voxels: int
    channels: int | None = None  # 4D with this many volumes is allowed (the single-file form)


@dataclass
class DecodedVolume:
    """Voxels as float32 (``(X, Y, Z)`` or ``(C, X, Y, Z)``) and the voxel-to-world affine."""

    data: np.ndarray
    affine: np.ndarray

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[-3:])  # type: ignore[return-value]


class _BoundedStream:
    """Decompressed bytes of ``raw`` (gzip, possibly multi-member, or plain), read ``n`` at a time.

    Never decompresses more than asked for: ``zlib``'s ``max_length`` holds the rest back.
    """

    def __init__(self, raw: bytes, field: str) -> None:
        self.field = field
        self.gzipped = raw[:2] == GZIP_MAGIC
        self._raw = memoryview(raw)
        self._pos = 0
        self._input = b""  # compressed bytes fed to the decompressor but not yet consumed
        self._members = 1
        self._d = zlib.decompressobj(wbits=31)

    def _next_raw(self) -> bytes:
        chunk = bytes(self._raw[self._pos:self._pos + _INPUT_SLICE])
        self._pos += len(chunk)
        return chunk

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only where the data ends."""
        if not self.gzipped:
            chunk = bytes(self._raw[self._pos:self._pos + n])
            self._pos += len(chunk)
            return chunk
        out, wanted = [], n
        while wanted > 0:
            if self._d.eof:  # a member ended: another one may follow (bgzip, pigz -i)
                leftover = self._d.unused_data or self._next_raw()
                if not leftover:
                    break
                if len(leftover) < 2:
                    leftover += self._next_raw()
                if leftover[:2] != GZIP_MAGIC:
                    raise ServeError(400, "bad_gzip", f"field {self.field!r}: bytes after the end of the gzip stream")
                self._members += 1
                if self._members > MAX_GZIP_MEMBERS:
                    message = f"field {self.field!r}: more than {MAX_GZIP_MEMBERS} gzip members"
                    raise ServeError(400, "bad_gzip", message)
                self._d, self._input = zlib.decompressobj(wbits=31), leftover
            if not self._input:
                self._input = self._next_raw()
                if not self._input:
                    break  # the stream is cut off: see ended_cleanly
            try:
                chunk = self._d.decompress(self._input, wanted)
            except zlib.error as exc:
                raise ServeError(400, "bad_gzip", f"field {self.field!r}: corrupt gzip data ({exc})") from None
            self._input = self._d.unconsumed_tail
            out.append(chunk)
            wanted -= len(chunk)
        return b"".join(out)

    def ended_cleanly(self) -> bool:
        """After a short read: ``True`` if the gzip stream ended with its trailer (plain data always)."""
        return not self.gzipped or bool(self._d.eof)


def _check_header_fields(header: nib.Nifti1Header, field: str, limits: DecodeLimits) -> tuple[tuple[int, ...], int]:
    """Validate ``header``; returns (shape, total bytes the file must hold)."""
    def fail(status: int, code: str, problem: str) -> ServeError:
        return ServeError(status, code, f"field {field!r}: {problem}")

    magic = bytes(header["magic"]).rstrip(b"\x00")
    if magic not in (b"n+1", b"n+2"):
        if magic in (b"ni1", b"ni2"):
            raise fail(400, "not_nifti", "a header/image pair (.hdr/.img) header; send single-file .nii or .nii.gz")
        raise fail(400, "not_nifti", "not a NIfTI-1/2 file (bad magic)")
    dim = [int(v) for v in header["dim"]]
    ndim = dim[0]
    if ndim < 1 or ndim > 7:
        raise fail(400, "bad_header", f"dim[0] is {ndim}, not a number of dimensions (1-7)")
    shape = tuple(dim[1:1 + ndim])
    if min(shape) < 1:
        raise fail(422, "bad_dimensions", f"dimensions {shape} include a zero or negative size")
    if ndim < 3:
        raise fail(422, "bad_dimensions", f"a {ndim}D image {shape}; each modality must be a 3D volume")
    if ndim > 4 or (ndim == 4 and shape[3] != 1 and shape[3] != limits.channels):
        expected = f"3D, or 4D with {limits.channels} volumes (one per channel)" if limits.channels else "3D"
        raise fail(422, "bad_dimensions", f"a {ndim}D image {shape}; expected {expected}")
    spatial = shape[:3]
    n_voxels = math.prod(spatial)
    if n_voxels > limits.max_voxels:
        raise fail(413, "volume_too_large",
                   f"{n_voxels} voxels per volume {spatial}, more than the limit {limits.max_voxels}")  # fmt: skip
    try:
        dtype = header.get_data_dtype()
    except Exception:
        raise fail(422, "unsupported_dtype", f"unknown datatype code {int(header['datatype'])}") from None
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.itemsize > 8:
        raise fail(422, "unsupported_dtype", f"voxel type {dtype} (only integer and real types are read)")
    with np.errstate(invalid="ignore", over="ignore"):
        pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not (np.all(np.isfinite(pixdim)) and np.all(pixdim > 0)):
        raise fail(422, "bad_header", f"voxel spacing (pixdim) {pixdim.tolist()} is not finite and positive")
    vox_offset = float(header["vox_offset"])
    header_size = int(header["sizeof_hdr"])
    first_voxel = header_size + 4  # the 4-byte extension flag follows the header
    if not math.isfinite(vox_offset) or not first_voxel <= vox_offset <= first_voxel + MAX_EXTENSION_BYTES \
            or vox_offset != int(vox_offset):
        raise fail(400, "bad_header", f"vox_offset {vox_offset} is not a byte offset after the header")
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if math.isinf(slope) or math.isinf(inter) or (math.isfinite(slope) and slope != 0 and math.isnan(inter)):
        raise fail(422, "bad_header", f"scaling scl_slope={slope}, scl_inter={inter} is not finite")
    try:
        affine = header.get_best_affine()
    except Exception:
        raise fail(422, "bad_header", "the header's affine (qform/sform) cannot be read") from None
    if not np.all(np.isfinite(affine)) or abs(float(np.linalg.det(affine[:3, :3]))) < 1e-12:
        raise fail(422, "bad_header", "the affine is singular or not finite")
    spacing = voxel_spacing(affine)
    low, high = SPACING_RANGE
    if not all(low <= s <= high for s in spacing):
        shown = tuple(round(s, 6) for s in spacing)
        raise fail(422, "bad_header", f"voxel spacing {shown} mm lies outside {low}-{high} mm")
    total = int(vox_offset) + math.prod(shape) * dtype.itemsize
    if total > limits.max_part_bytes:
        raise fail(413, "part_too_large", f"its header declares {total} bytes, more than the per-part limit "
                                          f"{limits.max_part_bytes} after decompression")  # fmt: skip
    return shape, total


def read_header(stream: _BoundedStream, field: str) -> tuple[nib.Nifti1Header, bytes]:
    """Decompress and parse only the header."""
    first = stream.read(4)
    if len(first) < 4:
        raise ServeError(400, "not_nifti", f"field {field!r}: too short to be NIfTI ({len(first)} bytes)")
    size = next((s for s in HEADER_SIZES if first in (struct.pack("<i", s), struct.pack(">i", s))), None)
    if size is None:
        raise ServeError(400, "not_nifti", f"field {field!r}: not a NIfTI-1/2 file (sizeof_hdr is neither 348 nor 540)")
    rest = stream.read(size - 4)
    if len(rest) < size - 4:
        message = f"field {field!r}: the NIfTI header is cut off ({4 + len(rest)} of {size} bytes)"
        raise ServeError(400, "truncated", message)
    raw = first + rest
    try:
        header = HEADER_SIZES[size].from_fileobj(io.BytesIO(raw), check=False)
    except Exception as exc:
        raise ServeError(400, "not_nifti", f"field {field!r}: unreadable NIfTI header ({type(exc).__name__})") from None
    return header, raw


def decode_nifti(raw: bytes, field: str, limits: DecodeLimits) -> DecodedVolume:
    """One uploaded part -> float32 voxels and affine; see the module docstring. Raises :class:`ServeError`."""
    stream = _BoundedStream(raw, field)
    header, head = read_header(stream, field)
    shape, total = _check_header_fields(header, field, limits)
    body = stream.read(total - len(head))
    if len(head) + len(body) < total:
        how = "the gzip stream ends early" if stream.gzipped and not stream.ended_cleanly() else "the data ends early"
        raise ServeError(400, "truncated", f"field {field!r}: its header declares {total} bytes, {how} after "
                                           f"{len(head) + len(body)}")  # fmt: skip
    if stream.read(1):
        raise ServeError(400, "trailing_data", f"field {field!r}: more data than the {total} bytes its header declares")
    if stream.gzipped and not stream.ended_cleanly():
        raise ServeError(400, "truncated", f"field {field!r}: the gzip stream is cut off (no end-of-stream marker)")
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    try:
        image = image_class.from_bytes(head + body)
        data = np.asarray(np.asanyarray(image.dataobj))
    except Exception as exc:
        raise ServeError(400, "not_nifti", f"field {field!r}: unreadable NIfTI data ({type(exc).__name__})") from None
    if len(shape) == 4 and shape[3] == 1:
        data = data.reshape(shape[:3])
    elif len(shape) == 4:
        data = np.moveaxis(data, 3, 0)  # (X, Y, Z, C) -> (C, X, Y, Z)
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become Inf, refused below
        data = data.astype(np.float32, copy=False)
    check_intensities(data, f"field {field!r}")
    return DecodedVolume(data=data, affine=np.asarray(image.affine, dtype=np.float64))


def check_intensities(data: np.ndarray, where: str) -> None:
    """Refuse NaN/Inf (with a count) and magnitudes no scanner writes, which overflow the z-score's sums."""
    if not data.size:
        return
    low, high = float(data.min()), float(data.max())  # NaN propagates through min and max
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise ServeError(422, "non_finite", f"{where}: {bad} voxels are NaN or Inf")
    if max(abs(low), abs(high)) > MAX_INTENSITY:
        raise ServeError(422, "out_of_range", f"{where}: intensities reach {max(abs(low), abs(high)):.3g}, beyond "
                                              f"+-{MAX_INTENSITY:.0e}; not an MRI volume")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Output


def encode_nifti(data: np.ndarray, affine: np.ndarray) -> bytes:
    """``.nii.gz`` bytes with a fresh header (geometry and data type only)."""
    return nifti_bytes(data, affine, gzip_output=True)


def encode_zip(files: dict[str, bytes], description: dict) -> bytes:
    """A zip of already-compressed NIfTI files (stored, not deflated again) plus ``outputs.json``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
        archive.writestr(zipfile.ZipInfo("outputs.json", date_time=(1980, 1, 1, 0, 0, 0)),
                         json.dumps(description, indent=2, sort_keys=True))  # fmt: skip
    return buffer.getvalue()


def channels_last(maps: np.ndarray) -> np.ndarray:
    """``(K, X, Y, Z)`` -> ``(X, Y, Z, K)``: NIfTI keeps the volume index last."""
    return np.ascontiguousarray(np.moveaxis(maps, 0, -1))


def check_same_grid(volumes: Sequence[tuple[str, DecodedVolume]], atol: float) -> None:
    """Every volume on the first one's grid (shape and affine), else 422 ``geometry_mismatch``."""
    (first_name, first), *others = volumes
    for name, volume in others:
        if volume.spatial_shape != first.spatial_shape:
            raise ServeError(422, "geometry_mismatch", f"field {name!r} has shape {volume.spatial_shape}, field "
                                                       f"{first_name!r} {first.spatial_shape}; all modalities must "
                                                       "share one grid")  # fmt: skip
        diff = float(np.max(np.abs(volume.affine - first.affine)))
        if diff > atol:
            raise ServeError(422, "geometry_mismatch", f"field {name!r}'s affine differs from field {first_name!r}'s "
                                                       f"by up to {diff:.4g} (limit {atol}); the modalities must be "
                                                       "co-registered")  # fmt: skip


__all__ = ["DecodeLimits", "DecodedVolume", "check_same_grid", "channels_last", "decode_nifti", "encode_nifti",
           "encode_zip", "read_header"]  # fmt: skip
