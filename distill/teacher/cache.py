"""The teacher soft-label cache: on-disk format, writer, reader and verifier.

Only this module knows the layout; everything else goes through :class:`CacheWriter`,
:class:`TeacherCache` and :func:`verify_cache`.

Layout of one cache folder::

    <cache>/
      spec.json                   written once, when the cache is created: format version,
                                  teacher (TeacherInfo.to_dict()), mode ("full" | "oof"),
                                  preprocessing config, quantisation, storage, toolkit version
      expected.json               optional: the case ids the run means to write (progress only)
      cases/
        <case_id>.json            the case entry (key, shapes, checksums, preprocess record ...)
        <case_id>.<token>.zarr/   zarr v3 group, never modified once it carries this name:
            images          float16 (4, X, Y, Z)  z-scored student inputs
            probabilities   uint8   (K, X, Y, Z)  p = q / 255
            uncertainty     uint8   (K, X, Y, Z)  std = q / 510
            regions         uint8   (X, Y, Z)     ground truth, bit 0 WT, bit 1 TC, bit 2 ET
                                                  (only when the case has labels)
            (each array folder: zarr.json plus chunk files c.<i>.<j>.<k>.<l>)
        .<name>.partial           a writer's work in progress, or debris of a killed writer
      manifest.json               written last, only when every expected case is complete

All arrays lie on Distill's preprocessed grid (cropped to the brain, optionally resampled,
padded), the grid students train on; the entry's preprocess record maps them back to the
original image. Arrays are chunked ``(C, 48, 48, 48)`` (clamped to the volume) and compressed
with blosc/zstd, followed by a crc32c checksum per chunk, so a random 3D patch decodes only
the chunks it touches and a damaged chunk raises instead of returning wrong values.

Completeness rule: a case is complete iff ``cases/<case_id>.json`` exists (and
:func:`verify_cache` passes). A writer writes the zarr group into a hidden ``.partial``
folder, renames it to a fresh ``<case_id>.<token>.zarr`` and only then replaces the entry
JSON atomically; that rename of the entry is the commit. A killed writer therefore leaves at
most an unreferenced folder, never an entry pointing at half-written data, and a stale case
stays readable until its replacement commits. The cache as a whole is complete iff
``manifest.json`` exists: :meth:`CacheWriter.finalize` writes it when every expected case is
complete, and every :meth:`CacheWriter.write_case` deletes it before committing, so a
manifest never vouches for a cache that changed after it was written.

Checksums: each entry holds the sha256 of every array as stored (quantised dtype, C order,
after decoding), so the check is independent of chunking and codec and covers what a reader
actually gets; :func:`verify_cache` decodes every array in full to compare. Missing chunk
files read back as zeros in zarr, which only this whole-array checksum can catch.

Quantisation (measured by ``benchmarks/teacher_cache/bench_cache_format.py`` on 3 BraTS 2018
cases with simulated 8-pass sigmoid ensembles; see ``RESULTS_format.md`` there): probabilities
are stored as uint8 ``q = round(255 p)``, max abs error 1/510 = 0.00196 (measured 0.00196;
mean 0.0003-0.001), which is 221x (1 mm) / 171x (2 mm) fewer bytes than nnU-Net's float32
``savez_compressed`` on the same grid for a confident teacher (background p ~ 3e-4), but only
27x / 17x for a hesitant one (background p ~ 7e-3, whose noise no lossless coder removes;
against nnU-Net's npz on the full original image it is 28x / 133x). float16 is more exact
(max 0.00024) but only 2x smaller than the npz, because near-zero float16 values keep noisy
mantissas; uint8 ``q / 128`` (error 1/256) would give 34x / 20x for the hesitant teacher and
is available through ``CacheSpec.quantisation`` if real teachers turn out that way. The
uncertainty (a standard deviation, so in [0, 0.5]) is uint8 ``q = round(510 s)``, max abs
error 1/1020. Student inputs (z-scores) stay float16 (relative error 2**-11) and are most of
a case's bytes (about 7 MiB of 7.4 at 1 mm). Decoded values are float32, so each bound holds
up to float32 rounding (~1e-7). The scheme and its bounds are in ``spec.json``; the measured
max/mean abs errors are in every entry and summarised in the manifest. A random 64³ patch of
every array reads in 40-60 ms at 1 mm, the whole case in 220-350 ms (2 busy shared cores).

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

import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from distill import __version__
from distill.core.atomic import PARTIAL_SUFFIX, atomic_write_json
from distill.data.conventions import REGIONS
from distill.data.preprocess import PreprocessRecord
from distill.errors import DistillError
from distill.teacher.base import TeacherInfo, canonical_hash

CACHE_FORMAT_VERSION = 1
MODES = ("full", "oof")  # every member on every case / only members that did not train on it

SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.json"
EXPECTED_FILE = "expected.json"
CASES_DIR = "cases"
DATA_SUFFIX = ".zarr"
ENTRY_SUFFIX = ".json"

IMAGES = "images"
PROBABILITIES = "probabilities"
UNCERTAINTY = "uncertainty"
REGIONS_ARRAY = "regions"
QUANTISED_ARRAYS = (IMAGES, PROBABILITIES, UNCERTAINTY)
N_IMAGE_CHANNELS = 4

# Case ids become file names: no separators, no leading dot (hidden names are work in progress).
_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Teachers' float32 maps may overshoot [0, 1] by rounding; anything further out is a bug upstream.
RANGE_SLACK = 1e-3
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class CacheError(DistillError):
    """A teacher cache is missing, incomplete, damaged, of another format or teacher, or cannot be written."""


# ----------------------------------------------------------------------------- quantisation


@dataclass(frozen=True)
class Quantiser:
    """How one array is stored.

    Attributes:
        dtype: ``"uint8"`` (linear, ``value = q / divisor``) or ``"float16"``.
        divisor: uint8 only; ``divisor * upper`` must not exceed 255.
        upper: values lie in ``[0, upper]`` (required for uint8; optional for float16,
            where it only serves to state an absolute error bound). ``0`` means unbounded.
    """

    dtype: str
    divisor: int = 0
    upper: float = 0.0

    def __post_init__(self) -> None:
        if self.dtype == "uint8":
            if self.divisor < 1 or self.upper <= 0 or self.divisor * self.upper > 255 + 1e-9:
                raise ValueError(f"uint8 quantiser needs divisor >= 1 and 0 < divisor * upper <= 255, got {self}")
        elif self.dtype != "float16":
            raise ValueError(f"unknown quantisation dtype {self.dtype!r} (known: uint8, float16)")

    @property
    def max_abs_error_bound(self) -> float | None:
        """Worst-case absolute error for values in ``[0, upper]``; ``None`` when unbounded (relative 2**-11)."""
        if self.dtype == "uint8":
            return 0.5 / self.divisor
        if self.upper > 0:
            # Half the float16 spacing in the binade just below ``upper``.
            return 2.0 ** (math.ceil(math.log2(self.upper)) - 1 - 11)
        return None

    def encode(self, values: np.ndarray, what: str) -> np.ndarray:
        """float array -> stored array (uint8 or float16); raises :class:`CacheError` naming ``what``."""
        values = np.asarray(values, dtype=np.float32)
        if not np.all(np.isfinite(values)):
            raise CacheError(f"{what}: contains NaN or Inf")
        if self.upper > 0:
            low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
            if low < -RANGE_SLACK or high > self.upper + RANGE_SLACK:
                raise CacheError(f"{what}: values span [{low:.4g}, {high:.4g}], expected [0, {self.upper:g}]")
            values = np.clip(values, 0.0, self.upper)
        if self.dtype == "uint8":
            return np.rint(values * np.float32(self.divisor)).astype(np.uint8)
        stored = values.astype(np.float16)
        if not np.all(np.isfinite(stored)):
            raise CacheError(f"{what}: values beyond float16 range (|x| > 65504)")
        return stored

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """Stored array -> float32 of the same shape."""
        values = stored.astype(np.float32)
        if self.dtype == "uint8":
            values /= np.float32(self.divisor)  # in place: patches are decoded in a training loop
        return values

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype}
        if self.dtype == "uint8":
            out["divisor"] = self.divisor
        if self.upper > 0:
            out["upper"] = self.upper
        out["max_abs_error_bound"] = self.max_abs_error_bound
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Quantiser:
        return cls(dtype=str(data["dtype"]), divisor=int(data.get("divisor", 0)), upper=float(data.get("upper", 0.0)))


def default_quantisation() -> dict[str, Any]:
    """uint8 probabilities (error <= 1/510) and uncertainty (<= 1/1020), float16 images."""
    return {
        IMAGES: Quantiser("float16").to_dict(),
        PROBABILITIES: Quantiser("uint8", divisor=255, upper=1.0).to_dict(),
        UNCERTAINTY: Quantiser("uint8", divisor=510, upper=0.5).to_dict(),
    }


def default_storage() -> dict[str, Any]:
    """Chunking and codec; chosen by the format benchmark (48³ chunks, zstd level 5, no shuffle)."""
    return {
        "engine": "zarr",
        "zarr_format": 3,
        "chunk_spatial": 48,
        "codec": {"name": "blosc", "cname": "zstd", "clevel": 5, "shuffle": "noshuffle"},
        "chunk_checksum": "crc32c",
    }


def measure_error(original: np.ndarray, restored: np.ndarray) -> dict[str, float]:
    """Max and mean absolute difference over every voxel of two float arrays of one shape.

    Works one channel at a time in float32 (ample for errors near 1e-3) and sums in float64,
    so a 1 mm case needs no float64 copies of its four image channels.
    """
    original, restored = np.asarray(original, dtype=np.float32), np.asarray(restored, dtype=np.float32)
    if original.size == 0:
        return {"max_abs": 0.0, "mean_abs": 0.0}
    worst, total = 0.0, 0.0
    for a, b in zip(original.reshape(original.shape[0], -1), restored.reshape(restored.shape[0], -1)):
        diff = np.abs(b - a)
        worst = max(worst, float(diff.max()))
        total += float(diff.sum(dtype=np.float64))
    return {"max_abs": worst, "mean_abs": total / original.size}


# ----------------------------------------------------------------------------- spec


def _json_normalised(obj: Any) -> Any:
    """What ``obj`` looks like after a JSON round trip (tuples become lists), so comparisons match files."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def teacher_identity_hash(teacher: Mapping[str, Any]) -> str:
    """Identity hash of a teacher description (``TeacherInfo.to_dict()``), by TeacherInfo's own rule."""
    known = {f.name for f in fields(TeacherInfo)}
    try:
        info = TeacherInfo(**{k: v for k, v in teacher.items() if k in known})
    except TypeError as exc:
        raise CacheError(f"teacher description is incomplete ({exc}); expected TeacherInfo.to_dict()") from exc
    return info.identity_hash


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds; equal specs (by :attr:`identity_hash`) may share one cache.

    Attributes:
        teacher: ``TeacherInfo.to_dict()`` of the teacher.
        mode: ``"full"`` (every member on every case) or ``"oof"`` (out-of-fold members only).
        preprocessing: the preprocessing config (e.g. ``asdict(PreprocessConfig)``).
        quantisation: array name -> :class:`Quantiser` dict, for ``images``, ``probabilities``
            and ``uncertainty``.
        toolkit_version: the Distill version that created the cache (informational).
        storage: chunking and codec (informational; an existing cache keeps its own).
        format_version: :data:`CACHE_FORMAT_VERSION` of the writer.
    """

    teacher: dict[str, Any]
    mode: str
    preprocessing: dict[str, Any]
    quantisation: dict[str, Any] = field(default_factory=default_quantisation)
    toolkit_version: str = __version__
    storage: dict[str, Any] = field(default_factory=default_storage)
    format_version: int = CACHE_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"cache mode must be one of {MODES}, got {self.mode!r}")
        for name in ("teacher", "preprocessing", "quantisation", "storage"):
            object.__setattr__(self, name, _json_normalised(getattr(self, name)))
        missing = [name for name in QUANTISED_ARRAYS if name not in self.quantisation]
        if missing:
            raise ValueError(f"quantisation lacks {missing}")
        for name in QUANTISED_ARRAYS:
            self.quantiser(name)  # fail early on an unknown scheme

    @classmethod
    def for_teacher(cls, info: TeacherInfo, mode: str, preprocessing: Mapping[str, Any], **kwargs: Any) -> CacheSpec:
        return cls(teacher=info.to_dict(), mode=mode, preprocessing=dict(preprocessing), **kwargs)

    @property
    def teacher_hash(self) -> str:
        return teacher_identity_hash(self.teacher)

    @property
    def teacher_name(self) -> str:
        return str(self.teacher.get("name", "?"))

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.teacher.get("channels", ()))

    @property
    def identity_hash(self) -> str:
        """Hash of everything that changes the cached values (not the storage or toolkit version)."""
        quantisers = {name: Quantiser.from_dict(self.quantisation[name]).to_dict() for name in QUANTISED_ARRAYS}
        return canonical_hash(
            {
                "format_version": self.format_version,
                "teacher": self.teacher_hash,
                "mode": self.mode,
                "preprocessing": self.preprocessing,
                "quantisation": quantisers,
            }
        )

    def quantiser(self, name: str) -> Quantiser:
        return Quantiser.from_dict(self.quantisation[name])

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "teacher": self.teacher,
            "teacher_identity_hash": self.teacher_hash,
            "mode": self.mode,
            "preprocessing": self.preprocessing,
            "quantisation": self.quantisation,
            "storage": self.storage,
            "toolkit_version": self.toolkit_version,
            "identity_hash": self.identity_hash,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheSpec:
        return cls(
            teacher=dict(data["teacher"]),
            mode=str(data["mode"]),
            preprocessing=dict(data["preprocessing"]),
            quantisation=dict(data["quantisation"]),
            toolkit_version=str(data.get("toolkit_version", "?")),
            storage=dict(data.get("storage", default_storage())),
            format_version=int(data["format_version"]),
        )

    def differences(self, other: CacheSpec) -> list[str]:
        """Human-readable lines naming what differs between ``self`` (stored) and ``other`` (new)."""
        lines = []
        if self.format_version != other.format_version:
            lines.append(f"format version: cache {self.format_version}, this run {other.format_version}")
        if self.teacher_hash != other.teacher_hash:
            lines.append(
                f"teacher identity: cache {self.teacher_hash} ({self.teacher_name}), "
                f"this run {other.teacher_hash} ({other.teacher_name}); "
                f"differing fields: {', '.join(_teacher_field_differences(self.teacher, other.teacher)) or '?'}"
            )
        if self.mode != other.mode:
            lines.append(f"mode: cache {self.mode!r}, this run {other.mode!r}")
        for name in ("preprocessing", "quantisation"):
            keys = _differing_keys(getattr(self, name), getattr(other, name))
            if keys:
                lines.append(f"{name}: differs in {', '.join(keys)}")
        return lines


def _differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _teacher_field_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Which identity fields (``output_kind``, ``channels``, ``tta``, ``identity.*``) differ."""
    top = [k for k in ("output_kind", "channels", "tta") if a.get(k) != b.get(k)]
    inner = _differing_keys(a.get("identity", {}), b.get("identity", {}))
    return top + [f"identity.{k}" for k in inner]


def case_key(spec: CacheSpec, members: Sequence[str], input_sha256: Mapping[str, str]) -> str:
    """The key of one case: it changes whenever anything that changes the cached content changes.

    ``canonical_hash`` of the spec's identity hash (teacher identity, mode, preprocessing,
    quantisation, format version), the members that predicted this case (all of them in full
    mode, the out-of-fold ones in oof mode) and the sha256 of each input file (name -> hash).
    """
    return canonical_hash({"spec": spec.identity_hash, "members": list(members), "inputs": dict(input_sha256)})


# ----------------------------------------------------------------------------- entries


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


# ----------------------------------------------------------------------------- paths and files


class _Layout:
    """File names inside one cache folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec = root / SPEC_FILE
        self.manifest = root / MANIFEST_FILE
        self.expected = root / EXPECTED_FILE
        self.cases = root / CASES_DIR

    def entry(self, case_id: str) -> Path:
        return self.cases / f"{case_id}{ENTRY_SUFFIX}"

    def data(self, name: str) -> Path:
        if "/" in name or "\\" in name or name.startswith("."):
            raise CacheError(f"{self.cases}: entry names a data folder outside the cache ({name!r})")
        return self.cases / name

    def entry_ids(self) -> list[str]:
        """Case ids with an entry file (not necessarily valid)."""
        if not self.cases.is_dir():
            return []
        return sorted(
            p.name[: -len(ENTRY_SUFFIX)]
            for p in self.cases.iterdir()
            if p.name.endswith(ENTRY_SUFFIX) and not p.name.startswith(".")
        )


def check_case_id(case_id: str) -> None:
    if not isinstance(case_id, str) or not _CASE_ID.fullmatch(case_id):
        raise CacheError(
            f"case id {case_id!r} cannot name a cache file (letters, digits, '_', '-', '.'; not starting with '.')"
        )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path}: {what} is unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise CacheError(f"{path}: {what} is not a JSON object")
    return data


def _check_format_version(data: Mapping[str, Any], path: Path) -> None:
    version = data.get("format_version")
    if version != CACHE_FORMAT_VERSION:
        raise CacheError(
            f"{path}: written in teacher-cache format version {version} (by distill "
            f"{data.get('toolkit_version', data.get('finalized_by', '?'))}); this toolkit (distill {__version__}) "
            f"reads format version {CACHE_FORMAT_VERSION} only. Re-create the cache with this toolkit."
        )


def _load_spec(layout: _Layout) -> CacheSpec:
    if not layout.spec.is_file():
        raise CacheError(f"{layout.root}: not a teacher cache (no {SPEC_FILE})")
    data = _read_json(layout.spec, "cache spec")
    _check_format_version(data, layout.spec)
    try:
        return CacheSpec.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"{layout.spec}: malformed cache spec ({exc})") from exc


def _load_entry(layout: _Layout, case_id: str) -> CaseEntry:
    path = layout.entry(case_id)
    data = _read_json(path, f"entry of case {case_id}")
    _check_format_version(data, path)
    try:
        entry = CaseEntry.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"{path}: malformed case entry ({exc})") from exc
    if entry.case_id != case_id:
        raise CacheError(f"{path}: entry is for case {entry.case_id!r}, not {case_id!r}")
    return entry


def _load_entry_or_none(layout: _Layout, case_id: str) -> CaseEntry | None:
    """The committed entry of ``case_id``, or ``None`` when absent or unusable (then it is rewritten)."""
    try:
        return _load_entry(layout, case_id)
    except CacheError:
        return None


def _write_entry(path: Path, entry: CaseEntry) -> None:
    """Commit a case: atomically replace its entry JSON."""
    atomic_write_json(path, entry.to_dict())


def _publish_once(target: Path, obj: Any) -> None:
    """Create ``target`` holding ``obj`` as JSON unless it already exists, atomically.

    A hard link fails if the target exists, so of several processes creating a cache at
    once exactly one file wins and nobody ever sees a half-written one.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(obj, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp_name, target)
        except FileExistsError:
            pass
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` or anything it was raised from is ENOSPC / EDQUOT."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in _DISK_FULL:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder below ``folder`` so a power cut cannot leave committed garbage."""
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _array_sha256(array: np.ndarray) -> str:
    """sha256 of the array's bytes in C order (the stored dtype, after decoding)."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


# ----------------------------------------------------------------------------- zarr storage


def _compressors(storage: Mapping[str, Any]) -> list[Any]:
    codec = storage["codec"]
    compressors: list[Any] = [BloscCodec(cname=codec["cname"], clevel=int(codec["clevel"]), shuffle=codec["shuffle"])]
    if storage.get("chunk_checksum") == "crc32c":
        compressors.append(Crc32cCodec())
    return compressors


def _write_array(group: zarr.Group, name: str, data: np.ndarray, storage: Mapping[str, Any]) -> None:
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


def _write_group(folder: Path, arrays: Mapping[str, np.ndarray], storage: Mapping[str, Any], case_id: str) -> None:
    attributes = {"case_id": case_id, "format_version": CACHE_FORMAT_VERSION}
    group = zarr.create_group(store=str(folder), attributes=attributes)
    for name, data in arrays.items():
        _write_array(group, name, data, storage)


def _open_array(folder: Path, name: str) -> zarr.Array:
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


# ----------------------------------------------------------------------------- writer


class CacheWriter:
    """Writes cases into one cache; several writers (processes) may share a cache.

    Use :meth:`open`, then per case :meth:`is_complete` / :meth:`write_case`, then
    :meth:`finalize`.
    """

    def __init__(self, root: Path, spec: CacheSpec) -> None:
        self.root = root
        self.spec = spec
        self._layout = _Layout(root)

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
        layout = _Layout(root)
        _refuse_foreign_folder(root)
        try:
            layout.cases.mkdir(parents=True, exist_ok=True)
            if not layout.spec.exists():
                _publish_once(layout.spec, spec.to_dict())
        except OSError as exc:
            raise _write_error(exc, f"creating the cache at {root}") from exc
        stored = _load_spec(layout)
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
        entry = _load_entry_or_none(self._layout, case_id)
        return entry is not None and entry.key == key and _data_folder_present(self._layout, entry)

    def stored_bytes(self, entry: CaseEntry) -> int:
        """Bytes on disk of one committed case (its data folder and entry)."""
        folder = self._layout.data(entry.data)
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) + self._layout.entry(entry.case_id).stat().st_size

    def completed(self) -> dict[str, str]:
        """case id -> key of every committed case."""
        entries = (_load_entry_or_none(self._layout, case_id) for case_id in self._layout.entry_ids())
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
            source=_json_normalised(dict(source)),
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
            entry = _load_entry_or_none(self._layout, case_id)
            if entry is None or (key is not None and entry.key != key) or not _data_folder_present(self._layout, entry):
                return False
            entries[case_id] = entry
        try:
            atomic_write_json(self._layout.manifest, _build_manifest(self.spec, entries))
        except OSError as exc:
            raise _write_error(exc, f"writing {self._layout.manifest}") from exc
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
        previous = _load_entry_or_none(layout, entry.case_id)
        committed = False
        try:
            _write_group(partial, stored, self.spec.storage, entry.case_id)
            _fsync_tree(partial)
            layout.manifest.unlink(missing_ok=True)  # the cache is about to change
            os.rename(partial, final)
            _fsync_dir(layout.cases)
            _write_entry(layout.entry(entry.case_id), entry)
            committed = True
        except Exception as exc:
            if isinstance(exc, OSError) or _is_disk_full(exc):  # zarr may wrap the OSError
                raise _write_error(exc, f"writing case {entry.case_id} to {self.root}", committed_nothing=True) from exc
            raise
        finally:
            if not committed:
                shutil.rmtree(partial, ignore_errors=True)
                shutil.rmtree(final, ignore_errors=True)
        if previous is not None and previous.data != entry.data and _data_folder_present(layout, previous):
            shutil.rmtree(layout.data(previous.data), ignore_errors=True)

    def _record_expected(self, case_ids: list[str]) -> None:
        for case_id in case_ids:
            check_case_id(case_id)
        try:
            atomic_write_json(self._layout.expected, {"case_ids": sorted(set(case_ids))})
        except OSError as exc:
            raise _write_error(exc, f"writing {self._layout.expected}") from exc

    def _expected_keys(self, expected: Iterable[str] | Mapping[str, str] | None) -> dict[str, str | None]:
        if expected is None:
            ids = _read_expected(self._layout)
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


def _write_error(exc: BaseException, doing: str, committed_nothing: bool = False) -> CacheError:
    """A one-line error for a failed write: disk full said as such, otherwise the OS's reason."""
    tail = "; nothing was committed for this case" if committed_nothing else ""
    if _is_disk_full(exc):
        return CacheError(f"disk full while {doing}{tail}")
    return CacheError(f"could not finish {doing} ({getattr(exc, 'strerror', None) or exc}){tail}")


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
    return _json_normalised(parsed.to_dict())


def _array_summary(array: np.ndarray) -> dict[str, Any]:
    return {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": _array_sha256(array)}


def _data_folder_present(layout: _Layout, entry: CaseEntry) -> bool:
    try:
        return layout.data(entry.data).is_dir()
    except CacheError:
        return False


def _read_expected(layout: _Layout) -> list[str] | None:
    if not layout.expected.is_file():
        return None
    return [str(c) for c in _read_json(layout.expected, "expected case list").get("case_ids", [])]


def _build_manifest(spec: CacheSpec, entries: Mapping[str, CaseEntry]) -> dict[str, Any]:
    """Deterministic (no time stamps), so every shard that finalises writes the same bytes."""
    ordered = [entries[case_id] for case_id in sorted(entries)]
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "finalized_by": __version__,
        "spec_hash": spec.identity_hash,
        "teacher_identity_hash": spec.teacher_hash,
        "mode": spec.mode,
        "n_cases": len(ordered),
        "quantisation_error": _summarise_errors(spec, ordered),
        "cases": [
            {"case_id": e.case_id, "key": e.key, "data": e.data, "sha256": _checksums(e)}
            for e in ordered
        ],
        "spec": spec.to_dict(),
    }


def _checksums(entry: CaseEntry) -> dict[str, str]:
    return {name: array["sha256"] for name, array in entry.arrays.items()}


def _summarise_errors(spec: CacheSpec, entries: Sequence[CaseEntry]) -> dict[str, dict[str, Any]]:
    """Per array: worst max abs error over cases, mean of the per-case mean abs errors, and the bound."""
    summary = {}
    for name in QUANTISED_ARRAYS:
        measured = [e.quantisation_error[name] for e in entries if name in e.quantisation_error]
        summary[name] = {
            "max_abs": max((m["max_abs"] for m in measured), default=0.0),
            "mean_abs": float(np.mean([m["mean_abs"] for m in measured])) if measured else 0.0,
            "bound": spec.quantiser(name).max_abs_error_bound,
        }
    return summary


# ----------------------------------------------------------------------------- reader


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
        self._layout = _Layout(root)
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
        layout = _Layout(root)
        spec = _load_spec(layout)
        if expect_teacher_hash is not None and spec.teacher_hash != expect_teacher_hash:
            raise CacheError(
                f"{root}: this cache was made by teacher {spec.teacher_name} (identity {spec.teacher_hash}), "
                f"not by the expected teacher (identity {expect_teacher_hash}); re-run teacher-cache for this teacher "
                "into a new folder"
            )
        if layout.manifest.is_file():
            manifest = _read_json(layout.manifest, "cache manifest")
            _check_format_version(manifest, layout.manifest)
            return cls(root, spec, manifest, _entries_listed_in(layout, spec, manifest))
        if require_complete:
            raise CacheError(_incomplete_message(layout))
        entries = {}
        for case_id in layout.entry_ids():
            entry = _load_entry_or_none(layout, case_id)
            if entry is not None and _data_folder_present(layout, entry):
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
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) + self._layout.entry(case_id).stat().st_size

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
                self._arrays[case_id] = {name: _open_array(folder, name) for name in entry.arrays}
            except Exception as exc:
                raise CacheError(
                    f"{self.root}: case {case_id}: data folder {entry.data} is missing or unreadable ({exc}); "
                    "run teacher-cache --verify"
                ) from exc
        return self._arrays[case_id]


def _entries_listed_in(layout: _Layout, spec: CacheSpec, manifest: Mapping[str, Any]) -> dict[str, CaseEntry]:
    """The entries a manifest lists, checking that the cache did not change after it was written."""
    if manifest.get("spec_hash") != spec.identity_hash:
        raise CacheError(
            f"{layout.manifest}: manifest belongs to another spec than {layout.spec}; re-run teacher-cache"
        )
    entries = {}
    for item in manifest.get("cases", []):
        case_id = str(item["case_id"])
        entry = _load_entry_or_none(layout, case_id)
        if entry is None or entry.key != item.get("key") or entry.data != item.get("data"):
            raise CacheError(
                f"{layout.root}: case {case_id} changed or vanished after the manifest was written; "
                "re-run teacher-cache with the same arguments to complete and re-finalise the cache"
            )
        entries[case_id] = entry
    return entries


def _incomplete_message(layout: _Layout) -> str:
    done = set(layout.entry_ids())
    expected = _read_expected(layout)
    if expected is not None:
        progress = f"{len(done & set(expected))} of {len(expected)} cases done"
    else:
        progress = f"{len(done)} cases done, total unknown"
    return (
        f"{layout.root}: cache incomplete ({progress}; no {MANIFEST_FILE}, which is written when every case is done). "
        "Re-run teacher-cache with the same arguments to finish it; complete cases are skipped."
    )


# ----------------------------------------------------------------------------- verification


@dataclass
class VerifyReport:
    """Result of :func:`verify_cache`.

    Attributes:
        path: the cache.
        problems: cache-level errors (spec, manifest).
        cases: case id -> problems of that case (empty list: the case is fine).
        missing: cases the manifest (or expected list) names that have no entry.
        unlisted: committed cases the manifest does not list (warning only).
        leftovers: partial or unreferenced files from interrupted writers (warning only;
            :func:`remove_leftovers` deletes them).
    """

    path: Path
    problems: list[str] = field(default_factory=list)
    cases: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    @property
    def bad_cases(self) -> dict[str, list[str]]:
        return {case_id: found for case_id, found in self.cases.items() if found}

    @property
    def ok(self) -> bool:
        return not self.problems and not self.bad_cases and not self.missing

    def lines(self) -> list[str]:
        """One line per finding, for the CLI."""
        out = [f"{self.path}: {'OK' if self.ok else 'FAILED'} ({len(self.cases)} cases checked)"]
        out += [f"  problem: {p}" for p in self.problems]
        out += [f"  {case_id}: {p}" for case_id, found in sorted(self.bad_cases.items()) for p in found]
        out += [f"  missing case: {case_id}" for case_id in self.missing]
        out += [f"  warning: case {case_id} is not listed in the manifest" for case_id in self.unlisted]
        out += [f"  warning: leftover {name}" for name in self.leftovers]
        return out


def verify_cache(path: str | os.PathLike[str]) -> VerifyReport:
    """Check every entry against the spec and manifest and every array against its checksum.

    Decodes every array in full (each chunk's crc32c and the whole array's sha256).
    """
    layout = _Layout(Path(path))
    report = VerifyReport(path=layout.root)
    try:
        spec = _load_spec(layout)
    except CacheError as exc:
        report.problems.append(str(exc))
        return report
    manifest = _verify_manifest(layout, spec, report)
    listed = {str(c["case_id"]): c for c in manifest.get("cases", [])} if manifest else {}
    for case_id in layout.entry_ids():
        report.cases[case_id] = _verify_case(layout, spec, case_id, listed.get(case_id))
    expected = list(listed) if manifest else (_read_expected(layout) or [])
    report.missing = sorted(set(expected) - set(report.cases))
    if manifest:
        report.unlisted = sorted(set(report.cases) - set(listed))
    report.leftovers = _find_leftovers(layout)
    return report


def _verify_manifest(layout: _Layout, spec: CacheSpec, report: VerifyReport) -> dict[str, Any] | None:
    if not layout.manifest.is_file():
        report.problems.append(f"no {MANIFEST_FILE}: the cache is incomplete or changed after it was finalised")
        return None
    try:
        manifest = _read_json(layout.manifest, "cache manifest")
        _check_format_version(manifest, layout.manifest)
    except CacheError as exc:
        report.problems.append(str(exc))
        return None
    if manifest.get("spec_hash") != spec.identity_hash:
        report.problems.append(f"{MANIFEST_FILE} was written for another spec ({manifest.get('spec_hash')})")
    return manifest


def _verify_case(layout: _Layout, spec: CacheSpec, case_id: str, listed: Mapping[str, Any] | None) -> list[str]:
    try:
        entry = _load_entry(layout, case_id)
    except CacheError as exc:
        return [str(exc)]
    found = []
    if entry.spec_hash != spec.identity_hash:
        found.append(f"written under another spec ({entry.spec_hash})")
    if listed is not None and (listed.get("key") != entry.key or listed.get("data") != entry.data):
        found.append("entry differs from the manifest (rewritten after finalize)")
    missing_arrays = [name for name in QUANTISED_ARRAYS if name not in entry.arrays]
    if missing_arrays:
        found.append(f"entry lacks arrays {missing_arrays}")
    try:
        folder = layout.data(entry.data)
    except CacheError as exc:
        return found + [str(exc)]
    if not folder.is_dir():
        return found + [f"data folder {entry.data} is missing"]
    for name, expected in entry.arrays.items():
        found += _verify_array(folder, name, expected)
    return found


def _verify_array(folder: Path, name: str, expected: Mapping[str, Any]) -> list[str]:
    try:
        array = _open_array(folder, name)
    except Exception as exc:
        return [f"array {name!r} unreadable ({type(exc).__name__}: {exc})"]
    if list(array.shape) != list(expected["shape"]) or str(array.dtype) != expected["dtype"]:
        return [f"array {name!r} is {array.dtype} {array.shape}, entry says {expected['dtype']} {expected['shape']}"]
    try:
        data = array[...]
    except Exception as exc:
        return [f"array {name!r} undecodable ({type(exc).__name__}: {exc})"]
    if _array_sha256(data) != expected["sha256"]:
        return [f"array {name!r} checksum mismatch (stored data differ from what was written)"]
    return []


def _find_leftovers(layout: _Layout) -> list[str]:
    """Hidden partial files/folders and data folders no entry refers to."""
    if not layout.cases.is_dir():
        return []
    referenced = set()
    for case_id in layout.entry_ids():
        entry = _load_entry_or_none(layout, case_id)
        if entry is not None:
            referenced.add(entry.data)
    leftovers = []
    for path in sorted(layout.cases.iterdir()):
        if path.name.startswith(".") or (path.name.endswith(DATA_SUFFIX) and path.name not in referenced):
            leftovers.append(f"{CASES_DIR}/{path.name}")
    leftovers += [p.name for p in sorted(layout.root.iterdir()) if p.name.startswith(".") and PARTIAL_SUFFIX in p.name]
    return leftovers


def remove_leftovers(path: str | os.PathLike[str]) -> list[str]:
    """Delete what interrupted writers left behind; returns what was removed.

    Only call this while no writer is running: a running writer's work in progress looks
    exactly like debris.
    """
    layout = _Layout(Path(path))
    _load_spec(layout)  # refuse to delete anything in a folder that is not a cache
    removed = _find_leftovers(layout)
    for name in removed:
        target = layout.root / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    return removed
