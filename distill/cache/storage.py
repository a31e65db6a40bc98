"""How a case's arrays lie in zarr: chunking, codecs, the region bit field and array checksums.

One case is one zarr v3 group. Arrays are chunked ``(C, 48, 48, 48)`` (clamped to the volume)
and compressed with blosc/zstd, followed by a crc32c checksum per chunk, so a random 3D patch
decodes only the chunks it touches and a damaged chunk raises instead of returning wrong values.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from distill.cache.format import CACHE_FORMAT_VERSION
from distill.core.hashing import bytes_sha256
from distill.data.conventions import REGIONS


def default_storage() -> dict[str, Any]:
    """Chunking and codec; chosen by the format benchmark (48³ chunks, zstd level 5, no shuffle)."""
    return {
        "engine": "zarr",
        "zarr_format": 3,
        "chunk_spatial": 48,
        "codec": {"name": "blosc", "cname": "zstd", "clevel": 5, "shuffle": "noshuffle"},
        "chunk_checksum": "crc32c",
    }


def _compressors(storage: Mapping[str, Any]) -> list[Any]:
    codec = storage["codec"]
    compressors: list[Any] = [BloscCodec(cname=codec["cname"], clevel=int(codec["clevel"]), shuffle=codec["shuffle"])]
    if storage.get("chunk_checksum") == "crc32c":
        compressors.append(Crc32cCodec())
    return compressors


def write_array(group: zarr.Group, name: str, data: np.ndarray, storage: Mapping[str, Any]) -> None:
    """One array of a case; chunks ``(C, s, s, s)`` clamped to the volume, all-zero chunks not stored."""
    spatial = int(storage["chunk_spatial"])
    chunks = (*data.shape[:-3], *(min(spatial, n) for n in data.shape[-3:]))
    names = ("channel", "x", "y", "z")[-data.ndim :]
    array = group.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        compressors=_compressors(storage),
        fill_value=0,
        dimension_names=names,
        # "c.0.1.2.3" files side by side: one folder per array instead of one per chunk row,
        # so listing, copying and fsyncing a case touches far fewer inodes.
        chunk_key_encoding={"name": "default", "separator": "."},
        config={"write_empty_chunks": False},
    )
    array[...] = data


def write_group(folder: Path, arrays: Mapping[str, np.ndarray], storage: Mapping[str, Any], case_id: str) -> None:
    attributes = {"case_id": case_id, "format_version": CACHE_FORMAT_VERSION}
    group = zarr.create_group(store=str(folder), attributes=attributes)
    for name, data in arrays.items():
        write_array(group, name, data, storage)


def open_array(folder: Path, name: str) -> zarr.Array:
    return zarr.open_array(store=str(folder / name), mode="r")


def pack_regions(regions: np.ndarray) -> np.ndarray:
    """bool ``(3, X, Y, Z)`` (WT, TC, ET) -> uint8 ``(X, Y, Z)`` with bit i = region i."""
    regions = np.asarray(regions).astype(bool, copy=False)
    packed = np.zeros(regions.shape[1:], dtype=np.uint8)
    for bit in range(regions.shape[0]):
        packed |= regions[bit].astype(np.uint8) << bit
    return packed


def unpack_regions(packed: np.ndarray) -> np.ndarray:
    """uint8 ``(X, Y, Z)`` bit field -> bool ``(3, X, Y, Z)`` in WT, TC, ET order."""
    return np.stack([(packed >> bit) & 1 for bit in range(len(REGIONS))]).astype(bool)


def array_sha256(array: np.ndarray) -> str:
    """sha256 of the array's bytes in C order (the stored dtype, after decoding)."""
    return bytes_sha256(np.ascontiguousarray(array).data)
