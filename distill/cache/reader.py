"""Reading a cache: :class:`TeacherCache` opens a complete cache and decodes cases or patches.

Opening refuses another format version, another teacher, or (by default) a cache without a
manifest; reads decode only the chunks a box touches and name a damaged array instead of
returning wrong values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from distill.cache.entries import CachedCase, CachedPatch, CaseEntry
from distill.cache.format import IMAGES, PROBABILITIES, QUANTISED_ARRAYS, REGIONS_ARRAY, UNCERTAINTY, CacheError
from distill.cache.layout import Layout, data_folder_present, load_entry_or_none, load_manifest, load_spec
from distill.cache.manifest import entries_listed_in, incomplete_message
from distill.cache.spec import CacheSpec
from distill.cache.storage import open_array, unpack_regions
from distill.data.conventions import REGIONS
from distill.data.preprocess import PreprocessRecord


class TeacherCache:
    """Read-only access to a cache; open with :meth:`open`.

    Safe to use from DataLoader worker processes (zarr resets its event loop after fork).
    """

    def __init__(
        self, root: Path, spec: CacheSpec, manifest: dict[str, Any] | None, entries: dict[str, CaseEntry]
    ) -> None:
        self.root = root
        self.spec = spec
        self.manifest = manifest
        self._layout = Layout(root)
        self._entries = entries
        self._arrays: dict[str, dict[str, zarr.Array]] = {}

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], expect_teacher_hash: str | None = None, require_complete: bool = True
    ) -> TeacherCache:
        """Open a cache, refusing another format version, another teacher or (by default) an incomplete cache.

        With ``require_complete=False`` a cache without manifest opens with the cases committed so far.
        """
        root = Path(path)
        layout = Layout(root)
        spec = load_spec(layout)
        if expect_teacher_hash is not None and spec.teacher_hash != expect_teacher_hash:
            raise CacheError(
                f"{root}: this cache was made by teacher {spec.teacher_name} (identity {spec.teacher_hash}), "
                f"not by the expected teacher (identity {expect_teacher_hash}); re-run teacher-cache for this teacher "
                "into a new folder"
            )
        if layout.manifest.is_file():
            manifest = load_manifest(layout)
            return cls(root, spec, manifest, entries_listed_in(layout, spec, manifest))
        if require_complete:
            raise CacheError(incomplete_message(layout))
        entries = {}
        for case_id in layout.entry_ids():
            entry = load_entry_or_none(layout, case_id)
            if entry is not None and data_folder_present(layout, entry):
                entries[case_id] = entry
        return cls(root, spec, None, entries)

    @property
    def case_ids(self) -> list[str]:
        return sorted(self._entries)

    @property
    def is_complete(self) -> bool:
        return self.manifest is not None

    def entry(self, case_id: str) -> CaseEntry:
        try:
            return self._entries[case_id]
        except KeyError:
            raise CacheError(f"{self.root}: case {case_id!r} is not in this cache") from None

    def stored_bytes(self, case_id: str, array: str | None = None) -> int:
        """Bytes on disk of one case (data folder and entry), or of one of its arrays."""
        entry = self.entry(case_id)
        folder = self._layout.data(entry.data)
        if array is not None:
            return sum(f.stat().st_size for f in (folder / array).rglob("*") if f.is_file())
        return (
            sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            + self._layout.entry(case_id).stat().st_size
        )

    def shape(self, case_id: str) -> tuple[int, int, int]:
        """Spatial shape ``(X, Y, Z)`` of the case's preprocessed grid."""
        return self.entry(case_id).shape

    def read_case(self, case_id: str) -> CachedCase:
        """Every array of one case, dequantised to float32 (regions as bool)."""
        entry = self.entry(case_id)
        box = tuple(slice(0, n) for n in entry.shape)
        arrays = self._read_box(case_id, box)
        return CachedCase(
            case_id=case_id,
            images=arrays[IMAGES],
            probabilities=arrays[PROBABILITIES],
            uncertainty=arrays[UNCERTAINTY],
            regions=arrays.get(REGIONS_ARRAY),
            record=PreprocessRecord.from_dict(entry.record),
            source=entry.source,
            entry=entry,
        )

    def read_patch(self, case_id: str, start: Sequence[int], size: Sequence[int]) -> CachedPatch:
        """The box ``[start, start + size)`` of one case, decoding only the chunks it touches.

        ``start`` may be negative and the box may reach past the volume (small volumes,
        patches centred near the border): those voxels are zero (regions ``False``).
        """
        entry = self.entry(case_id)
        start, size = tuple(int(s) for s in start), tuple(int(n) for n in size)
        if len(start) != 3 or len(size) != 3 or min(size) < 1:
            raise ValueError(f"start and size must be 3 integers with size >= 1, got {start}, {size}")
        inside = tuple(slice(max(s, 0), min(s + n, dim)) for s, n, dim in zip(start, size, entry.shape))
        empty = any(b.stop <= b.start for b in inside)
        read = {} if empty else self._read_box(case_id, inside)
        if all(b.stop - b.start == n for b, n in zip(inside, size)):
            out = read  # wholly inside the volume: nothing to pad
        else:
            target = tuple(slice(b.start - s, b.stop - s) for b, s in zip(inside, start))
            out = {}
            for name, channels, dtype in self._patch_arrays(entry):
                out[name] = np.zeros((channels, *size), dtype=dtype)
                if not empty:
                    out[name][(slice(None), *target)] = read[name]
        return CachedPatch(
            case_id=case_id,
            start=start,  # type: ignore[arg-type]
            size=size,  # type: ignore[arg-type]
            images=out[IMAGES],
            probabilities=out[PROBABILITIES],
            uncertainty=out[UNCERTAINTY],
            regions=out.get(REGIONS_ARRAY),
        )

    # -- internals

    def _patch_arrays(self, entry: CaseEntry) -> list[tuple[str, int, type]]:
        arrays = [(name, entry.arrays[name]["shape"][0], np.float32) for name in QUANTISED_ARRAYS]
        if entry.has_regions:
            arrays.append((REGIONS_ARRAY, len(REGIONS), bool))
        return arrays

    def _read_box(self, case_id: str, box: tuple[slice, ...]) -> dict[str, np.ndarray]:
        """Dequantised arrays of ``case_id`` inside ``box`` (which lies within the volume)."""
        out = {}
        for name, array in self._open_case(case_id).items():
            try:
                stored = array[(slice(None), *box)] if name != REGIONS_ARRAY else array[box]
            except Exception as exc:  # zarr raises ValueError for checksum mismatches, others for I/O
                raise CacheError(
                    f"{self.root}: case {case_id}: array {name!r} is damaged ({type(exc).__name__}: {exc}); "
                    "run teacher-cache --verify, then re-run teacher-cache to rewrite the case"
                ) from exc
            out[name] = unpack_regions(stored) if name == REGIONS_ARRAY else self.spec.quantiser(name).decode(stored)
        return out

    def _open_case(self, case_id: str) -> dict[str, zarr.Array]:
        if case_id not in self._arrays:
            entry = self.entry(case_id)
            folder = self._layout.data(entry.data)
            try:
                self._arrays[case_id] = {name: open_array(folder, name) for name in entry.arrays}
            except Exception as exc:
                raise CacheError(
                    f"{self.root}: case {case_id}: data folder {entry.data} is missing or unreadable ({exc}); "
                    "run teacher-cache --verify"
                ) from exc
        return self._arrays[case_id]
