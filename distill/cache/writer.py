"""Writing a cache: :class:`CacheWriter` quantises, stores and commits cases, then the manifest.

Concurrency: several processes may write different cases of one cache at the same time
(``--shard i/n``, Ray): shared files (spec, manifest, expected list, entries) are only ever
created by an atomic rename, ``spec.json`` is created at most once (a hard link that fails if
it exists), and each process may call :meth:`CacheWriter.finalize`; the last one wins and
they all write the same content. A writer only ever deletes the data folder that the case's
entry named before its own commit, so even two writers of the same case leave a valid entry
(the last commit wins; the loser's folder stays behind as a leftover). If a case is
rewritten while another process finalises, the manifest may list the old key: the reader and
:func:`verify_cache` compare every manifest line with its entry and refuse such a cache
until it is finalised again.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.cache.durability import fsync_dir, fsync_tree, is_disk_full, publish_once, write_entry, write_error
from distill.cache.entries import CaseEntry
from distill.cache.format import (
    CASES_DIR,
    DATA_SUFFIX,
    IMAGES,
    N_IMAGE_CHANNELS,
    PROBABILITIES,
    REGIONS_ARRAY,
    SPEC_FILE,
    UNCERTAINTY,
    CacheError,
    check_case_id,
)
from distill.cache.layout import Layout, data_folder_present, load_entry_or_none, load_spec, read_expected
from distill.cache.manifest import build_manifest
from distill.cache.quantise import measure_error
from distill.cache.spec import CacheSpec, case_key, json_normalised
from distill.cache.storage import array_sha256, pack_regions, write_group
from distill.core.atomic import PARTIAL_SUFFIX, atomic_write_json
from distill.data.conventions import REGIONS
from distill.data.preprocess import PreprocessRecord


class CacheWriter:
    """Writes cases into one cache; several writers (processes) may share a cache.

    Use :meth:`open`, then per case :meth:`is_complete` / :meth:`write_case`, then
    :meth:`finalize`.
    """

    def __init__(self, root: Path, spec: CacheSpec) -> None:
        self.root = root
        self.spec = spec
        self._layout = Layout(root)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], spec: CacheSpec, expected_case_ids: Iterable[str] | None = None
    ) -> CacheWriter:
        """Create the cache at ``path``, or join an existing one made with an equal spec.

        Raises :class:`CacheError` if the folder holds something else, a cache of another
        format version, or one whose teacher, mode, preprocessing or quantisation differ
        (naming both teacher identity hashes and the differing fields). ``expected_case_ids``
        (optional) lets progress messages say "N of M cases done".
        """
        root = Path(path)
        layout = Layout(root)
        _refuse_foreign_folder(root)
        try:
            layout.cases.mkdir(parents=True, exist_ok=True)
            if not layout.spec.exists():
                publish_once(layout.spec, spec.to_dict())
        except OSError as exc:
            raise write_error(exc, f"creating the cache at {root}") from exc
        stored = load_spec(layout)
        differences = stored.differences(spec)
        if differences:
            raise CacheError(
                f"{root}: refusing to add to a cache made with a different teacher or settings:\n  - "
                + "\n  - ".join(differences)
                + "\nWrite to a new cache folder (or delete this one to rebuild it)."
            )
        writer = cls(root, stored)
        if expected_case_ids is not None:
            writer._record_expected(list(expected_case_ids))
        return writer

    def case_key(self, members: Sequence[str], input_sha256: Mapping[str, str]) -> str:
        """:func:`case_key` under this cache's spec."""
        return case_key(self.spec, members, input_sha256)

    def is_complete(self, case_id: str, key: str) -> bool:
        """True if ``case_id`` is committed with this ``key`` and its data folder exists.

        Cheap (no decoding); :func:`verify_cache` checks the data itself.
        """
        check_case_id(case_id)
        entry = load_entry_or_none(self._layout, case_id)
        return entry is not None and entry.key == key and data_folder_present(self._layout, entry)

    def stored_bytes(self, entry: CaseEntry) -> int:
        """Bytes on disk of one committed case (its data folder and entry)."""
        folder = self._layout.data(entry.data)
        return (
            sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            + self._layout.entry(entry.case_id).stat().st_size
        )

    def completed(self) -> dict[str, str]:
        """case id -> key of every committed case."""
        entries = (load_entry_or_none(self._layout, case_id) for case_id in self._layout.entry_ids())
        return {e.case_id: e.key for e in entries if e is not None}

    def write_case(
        self,
        case_id: str,
        key: str,
        images: np.ndarray,
        probabilities: np.ndarray,
        uncertainty: np.ndarray,
        regions: np.ndarray | None = None,
        *,
        record: PreprocessRecord | Mapping[str, Any],
        source: Mapping[str, Any],
        n_passes: int,
        seconds: float,
    ) -> CaseEntry:
        """Quantise, store and commit one case (replacing any earlier version of it).

        Args:
            case_id: file-name-safe case identifier.
            key: see :func:`case_key`.
            images: float32 ``(4, X, Y, Z)`` z-scored inputs on the preprocessed grid.
            probabilities: float32 ``(K, X, Y, Z)`` in [0, 1], K = number of teacher channels.
            uncertainty: float32 ``(K, X, Y, Z)`` standard deviations in [0, 0.5].
            regions: bool ``(3, X, Y, Z)`` ground truth (WT, TC, ET), or ``None``.
            record: the case's :class:`PreprocessRecord` (or its dict); its shape must be ``(X, Y, Z)``.
            source: JSON-serialisable information on the inputs (e.g. file sha256, members used).
            n_passes: forward passes averaged; seconds: teacher time for the case.

        Raises :class:`CacheError` on bad arrays, a full disk or any other write failure;
        then nothing of this case was committed (an earlier complete version stays).
        """
        check_case_id(case_id)
        shape = _check_case_arrays(case_id, images, probabilities, uncertainty, regions, len(self.spec.channels))
        record_dict = _record_dict(case_id, record, shape)
        if n_passes < 1 or seconds < 0:
            raise CacheError(f"case {case_id}: n_passes must be >= 1 and seconds >= 0, got {n_passes}, {seconds}")
        stored, errors = self._quantise(case_id, images, probabilities, uncertainty)
        if regions is not None:
            stored[REGIONS_ARRAY] = pack_regions(regions)
        entry = CaseEntry(
            case_id=case_id,
            key=key,
            data=f"{case_id}.{secrets.token_hex(6)}{DATA_SUFFIX}",
            shape=shape,
            arrays={name: _array_summary(a) for name, a in stored.items()},
            record=record_dict,
            source=json_normalised(dict(source)),
            n_passes=int(n_passes),
            seconds=float(seconds),
            quantisation_error=errors,
            spec_hash=self.spec.identity_hash,
        )
        self._commit(entry, stored)
        return entry

    def finalize(self, expected_case_ids: Iterable[str] | Mapping[str, str] | None = None) -> bool:
        """Write ``manifest.json`` if every expected case is complete; return whether it did.

        ``expected_case_ids``: case ids, or case id -> key to also require matching keys;
        ``None`` uses the list given to :meth:`open`. Several shards may call this; the last
        one wins and all write the same content.
        """
        expected = self._expected_keys(expected_case_ids)
        entries = {}
        for case_id, key in expected.items():
            entry = load_entry_or_none(self._layout, case_id)
            if entry is None or (key is not None and entry.key != key) or not data_folder_present(self._layout, entry):
                return False
            entries[case_id] = entry
        try:
            atomic_write_json(self._layout.manifest, build_manifest(self.spec, entries))
        except OSError as exc:
            raise write_error(exc, f"writing {self._layout.manifest}") from exc
        return True

    # -- internals

    def _quantise(self, case_id, images, probabilities, uncertainty) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        stored, errors = {}, {}
        for name, values in ((IMAGES, images), (PROBABILITIES, probabilities), (UNCERTAINTY, uncertainty)):
            quantiser = self.spec.quantiser(name)
            stored[name] = quantiser.encode(values, f"case {case_id}: {name}")
            errors[name] = measure_error(values, quantiser.decode(stored[name]))
        return stored, errors

    def _commit(self, entry: CaseEntry, stored: Mapping[str, np.ndarray]) -> None:
        """Write the data folder under a hidden name, rename it, then commit the entry.

        Any failure before the entry is written removes both folders again, so nothing of
        this attempt remains; an earlier committed version of the case is untouched.
        """
        layout = self._layout
        partial = layout.cases / f".{entry.data}{PARTIAL_SUFFIX}"
        final = layout.data(entry.data)
        previous = load_entry_or_none(layout, entry.case_id)
        committed = False
        try:
            write_group(partial, stored, self.spec.storage, entry.case_id)
            fsync_tree(partial)
            layout.manifest.unlink(missing_ok=True)  # the cache is about to change
            os.rename(partial, final)
            fsync_dir(layout.cases)
            write_entry(layout.entry(entry.case_id), entry)
            committed = True
        except Exception as exc:
            if isinstance(exc, OSError) or is_disk_full(exc):  # zarr may wrap the OSError
                raise write_error(exc, f"writing case {entry.case_id} to {self.root}", committed_nothing=True) from exc
            raise
        finally:
            if not committed:
                shutil.rmtree(partial, ignore_errors=True)
                shutil.rmtree(final, ignore_errors=True)
        if previous is not None and previous.data != entry.data and data_folder_present(layout, previous):
            shutil.rmtree(layout.data(previous.data), ignore_errors=True)

    def _record_expected(self, case_ids: list[str]) -> None:
        for case_id in case_ids:
            check_case_id(case_id)
        try:
            atomic_write_json(self._layout.expected, {"case_ids": sorted(set(case_ids))})
        except OSError as exc:
            raise write_error(exc, f"writing {self._layout.expected}") from exc

    def _expected_keys(self, expected: Iterable[str] | Mapping[str, str] | None) -> dict[str, str | None]:
        if expected is None:
            ids = read_expected(self._layout)
            if ids is None:
                raise CacheError(f"{self.root}: finalize needs the expected case ids (none were given to open)")
            return {case_id: None for case_id in ids}
        if isinstance(expected, Mapping):
            keys: dict[str, str | None] = {str(k): str(v) for k, v in expected.items()}
        else:
            keys = {str(case_id): None for case_id in expected}
        if not keys:
            raise CacheError(f"{self.root}: finalize was given no expected cases")
        return keys


def _refuse_foreign_folder(root: Path) -> None:
    """Refuse to turn a non-empty folder that is not a cache into one (it may be the user's data)."""
    if root.exists() and not root.is_dir():
        raise CacheError(f"{root}: exists and is not a folder")
    if root.is_dir() and not (root / SPEC_FILE).exists():
        others = [p.name for p in root.iterdir() if p.name != CASES_DIR and not p.name.startswith(".")]
        if others:
            raise CacheError(
                f"{root}: not empty and not a teacher cache (no {SPEC_FILE}); choose an empty or new folder"
            )


def _check_case_arrays(case_id, images, probabilities, uncertainty, regions, n_channels) -> tuple[int, int, int]:
    """Shapes agree with each other and the teacher's channel count; returns ``(X, Y, Z)``."""
    images, probabilities, uncertainty = (np.asarray(a) for a in (images, probabilities, uncertainty))
    if images.ndim != 4 or images.shape[0] != N_IMAGE_CHANNELS:
        raise CacheError(f"case {case_id}: images must be (4, X, Y, Z), got {images.shape}")
    shape = tuple(int(n) for n in images.shape[1:])
    if probabilities.shape != (n_channels, *shape):
        raise CacheError(f"case {case_id}: probabilities must be {(n_channels, *shape)}, got {probabilities.shape}")
    if uncertainty.shape != probabilities.shape:
        raise CacheError(
            f"case {case_id}: uncertainty shape {uncertainty.shape} differs from probabilities {probabilities.shape}"
        )
    if regions is not None:
        regions = np.asarray(regions)
        if regions.shape != (len(REGIONS), *shape):
            raise CacheError(f"case {case_id}: regions must be {(len(REGIONS), *shape)}, got {regions.shape}")
        if regions.dtype != bool and not np.isin(regions, (0, 1)).all():
            raise CacheError(f"case {case_id}: regions must be boolean (0/1)")
    return shape  # type: ignore[return-value]


def _record_dict(case_id: str, record: PreprocessRecord | Mapping[str, Any], shape: tuple[int, int, int]) -> dict:
    parsed = record if isinstance(record, PreprocessRecord) else PreprocessRecord.from_dict(dict(record))
    if parsed.shape != shape:
        raise CacheError(f"case {case_id}: preprocess record describes grid {parsed.shape}, arrays are {shape}")
    return json_normalised(parsed.to_dict())


def _array_summary(array: np.ndarray) -> dict[str, Any]:
    return {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": array_sha256(array)}
