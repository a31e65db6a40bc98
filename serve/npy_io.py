"""``.npy`` in and out for ``/segment/raw``, without ever unpickling.

The header is read with numpy's own header parser (a literal, never code), then checked
before any data is touched: float16 or float32 only (object arrays, which would need pickle,
are refused), ``(C, X, Y, Z)`` with the package's channel count, spatial sizes that are
multiples of the package's divisor, a voxel limit, and exactly as many data bytes as the
header declares.
"""

from __future__ import annotations

import io
import math

import numpy as np

from serve.errors import ServeError
from serve.nifti_io import check_intensities

ACCEPTED_DTYPES = (np.dtype("float16"), np.dtype("float32"))


def decode_npy(raw: bytes, channels: int, divisor: int, max_voxels: int) -> np.ndarray:
    """The array as C-ordered float32 ``(C, X, Y, Z)``; :class:`ServeError` for anything else."""
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:
        message = f"the body is not an .npy array ({type(exc).__name__}: {str(exc)[:120]})"
        raise ServeError(400, "invalid_npy", message) from None
    if dtype.hasobject:
        raise ServeError(422, "pickled_array", "object arrays need unpickling, which this service never does; send "
                                               "float16 or float32")  # fmt: skip
    if dtype.newbyteorder("=") not in ACCEPTED_DTYPES or dtype.fields is not None:
        raise ServeError(422, "unsupported_dtype", f"dtype {dtype}; send float16 or float32")
    if len(shape) != 4 or shape[0] != channels:
        raise ServeError(422, "wrong_shape", f"shape {tuple(shape)}; expected ({channels}, X, Y, Z)")
    spatial = tuple(int(s) for s in shape[1:])
    if min(spatial) < divisor or any(s % divisor for s in spatial):
        raise ServeError(422, "wrong_shape", f"spatial shape {spatial}: each size must be a positive multiple of "
                                             f"the package's divisor {divisor} (its preprocessing pads so)")
    if math.prod(spatial) > max_voxels:
        message = f"{math.prod(spatial)} voxels per channel, more than the limit {max_voxels}"
        raise ServeError(413, "volume_too_large", message)
    offset = stream.tell()
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - offset != expected:
        code = "truncated" if len(raw) - offset < expected else "trailing_data"
        raise ServeError(400, code, f"the header declares {expected} data bytes, the body holds {len(raw) - offset}")
    array = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=offset)
    array = array.reshape(shape, order="F" if fortran_order else "C")
    images = np.ascontiguousarray(array, dtype=np.float32)
    check_intensities(images, "the array")
    return images


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


__all__ = ["ACCEPTED_DTYPES", "decode_npy", "encode_npy"]
