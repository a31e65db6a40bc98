"""What one cached case is: its committed entry (:class:`CaseEntry`) and what a reader gets back.

The entry (``cases/<case_id>.json``) names the case's data folder and holds the sha256 of
every array as stored, the measured quantisation errors and the preprocess record that maps
the case back to the original image; :class:`CachedCase` and :class:`CachedPatch` are the
dequantised arrays a reader returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill import __version__
from distill.cache.format import CACHE_FORMAT_VERSION, REGIONS_ARRAY
from distill.data.conventions import REGIONS
from distill.data.preprocess import PreprocessRecord


@dataclass(frozen=True)
class CaseEntry:
    """The committed description of one cached case (``cases/<case_id>.json``).

    Attributes:
        case_id: the case.
        key: see :func:`case_key`; a re-run with a different key rewrites the case.
        data: name of the case's zarr folder inside ``cases/``.
        shape: spatial shape ``(X, Y, Z)`` of the preprocessed grid.
        arrays: array name -> ``{"shape", "dtype", "sha256"}`` as stored.
        record: ``PreprocessRecord.to_dict()``: how to map back to the original image.
        source: caller's information on the inputs (file hashes, members used ...).
        n_passes: forward passes averaged into the probabilities.
        seconds: teacher time for this case.
        quantisation_error: array name -> measured ``{"max_abs", "mean_abs"}``.
        spec_hash: identity hash of the spec the case was written under.
        toolkit_version: Distill version of the writer.
    """

    case_id: str
    key: str
    data: str
    shape: tuple[int, int, int]
    arrays: dict[str, dict[str, Any]]
    record: dict[str, Any]
    source: dict[str, Any]
    n_passes: int
    seconds: float
    quantisation_error: dict[str, dict[str, float]]
    spec_hash: str
    toolkit_version: str = __version__
    format_version: int = CACHE_FORMAT_VERSION

    @property
    def has_regions(self) -> bool:
        return REGIONS_ARRAY in self.arrays

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "case_id": self.case_id,
            "key": self.key,
            "data": self.data,
            "shape": list(self.shape),
            "arrays": self.arrays,
            "region_bits": list(REGIONS) if self.has_regions else None,
            "record": self.record,
            "source": self.source,
            "n_passes": self.n_passes,
            "seconds": self.seconds,
            "quantisation_error": self.quantisation_error,
            "spec_hash": self.spec_hash,
            "toolkit_version": self.toolkit_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseEntry:
        return cls(
            case_id=str(data["case_id"]),
            key=str(data["key"]),
            data=str(data["data"]),
            shape=tuple(int(n) for n in data["shape"]),  # type: ignore[arg-type]
            arrays={str(k): dict(v) for k, v in data["arrays"].items()},
            record=dict(data["record"]),
            source=dict(data.get("source") or {}),
            n_passes=int(data["n_passes"]),
            seconds=float(data["seconds"]),
            quantisation_error={str(k): dict(v) for k, v in data.get("quantisation_error", {}).items()},
            spec_hash=str(data["spec_hash"]),
            toolkit_version=str(data.get("toolkit_version", "?")),
            format_version=int(data["format_version"]),
        )


@dataclass
class CachedCase:
    """One case as read back (all on the preprocessed grid).

    Attributes:
        case_id: the case.
        images: float32 ``(4, X, Y, Z)`` z-scored inputs.
        probabilities: float32 ``(K, X, Y, Z)`` in [0, 1], within the recorded error bound.
        uncertainty: float32 ``(K, X, Y, Z)`` in [0, 0.5].
        regions: bool ``(3, X, Y, Z)`` (WT, TC, ET) ground truth, or ``None``.
        record: how to map back to the original image.
        source: the writer's information on the inputs.
        entry: the full entry.
    """

    case_id: str
    images: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    regions: np.ndarray | None
    record: PreprocessRecord
    source: dict[str, Any]
    entry: CaseEntry


@dataclass
class CachedPatch:
    """A box of one case; voxels beyond the volume are zero (``False`` for regions).

    Attributes:
        images: float32 ``(4, *size)``; probabilities, uncertainty: float32 ``(K, *size)``;
        regions: bool ``(3, *size)`` or ``None``; start, size: the box asked for.
    """

    case_id: str
    start: tuple[int, int, int]
    size: tuple[int, int, int]
    images: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    regions: np.ndarray | None
